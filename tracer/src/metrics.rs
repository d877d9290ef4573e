//! TODO(stage owner): metrics
