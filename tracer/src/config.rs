//! The agent's and monitor's configuration: one TOML file, one section per stage, each with
//! defaults and validated at load. The embedded default traces the testbed.

use std::path::Path;

use serde::Deserialize;

/// The configuration that ships inside the binary: traces the testbed on loopback.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../deploy/config/testbed.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (pass an existing file with --config)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {origin} is not valid TOML for this version: {source}")]
    Parse {
        origin: String,
        source: toml::de::Error,
    },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub capture: crate::capture::CaptureConfig,
    #[serde(default)]
    pub streams: crate::streams::StreamsConfig,
    /// Per-service rules: which exchange means which order and status.
    #[serde(default, rename = "service")]
    pub services: Vec<crate::orders::ServiceRules>,
    #[serde(default)]
    pub sampling: crate::sampling::SamplingConfig,
    #[serde(default)]
    pub export: crate::export::ExportConfig,
    #[serde(default)]
    pub lifecycle: crate::lifecycle::LifecycleConfig,
    #[serde(default)]
    pub store: crate::store::StoreConfig,
    #[serde(default)]
    pub api: crate::api::ApiConfig,
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The file given on the command line, or the embedded default when none is.
    pub fn load_or_embedded(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None => Ok(Self::embedded_default()),
        }
    }

    /// The embedded default (the testbed's config).
    pub fn embedded_default() -> Self {
        Self::parse(EMBEDDED_DEFAULT, "embedded default")
            .expect("the embedded default config is validated by a unit test")
    }

    /// Parses and validates config text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_string(),
            source,
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Each stage checks its own section; the first problem is reported.
    fn validate(&self) -> Result<(), String> {
        self.capture.validate()?;
        self.streams.validate()?;
        for service in &self.services {
            service.validate()?;
        }
        self.sampling.validate()?;
        self.export.validate()?;
        self.lifecycle.validate()?;
        self.store.validate()?;
        self.api.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        Config::parse(EMBEDDED_DEFAULT, "embedded default").unwrap();
    }

    #[test]
    fn unknown_section_is_a_clear_error() {
        let err = Config::parse("[no_such_section]\nx = 1\n", "test").unwrap_err();
        assert!(err.to_string().contains("no_such_section"), "{err}");
    }
}
