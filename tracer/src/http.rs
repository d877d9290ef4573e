//! TODO(stage owner): http
