//! Capture: loads the eBPF programs, keeps the kernel's target and socket tables filled, and
//! turns ring-buffer entries into [`CaptureEvent`]s.

pub mod cli;
pub mod event;

pub use event::{CaptureEvent, ConnKey, Direction, Role};

/// Configuration section of this stage (placeholder until the stage lands).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {}

impl CaptureConfig {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
