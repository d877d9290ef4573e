//! TODO(stage owner): api

/// Configuration section of this stage (placeholder until the stage lands).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
