//! TODO(stage owner): receiver
