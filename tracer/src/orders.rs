//! TODO(stage owner): orders

/// The rules of one service (placeholder until the stage lands).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRules {
    pub name: String,
}

impl ServiceRules {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
