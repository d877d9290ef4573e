//! The standard OpenTelemetry variables over the `[export]` section, as the SDK specification
//! reads them: `OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_*` (the `_TRACES_` ones win over the
//! general ones), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`. A variable that is set but
//! cannot take effect here yields a warning naming it, never silence.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{ExportConfig, ExportKind};

/// The `OTEL_*` variables of the process (or of a test).
#[derive(Debug, Clone, Default)]
pub struct OtelEnv {
    vars: BTreeMap<String, String>,
}

/// What the command does with spans, which decides what a variable can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportUse {
    /// `tracer agent`: exchange spans only, each named for its traced service.
    Agent,
    /// `tracer run`: exchange spans and the monitor's root spans, through the exporter.
    AllInOne,
    /// `tracer monitor`: no exporter; received spans and root spans go to `--forward-to`.
    Forwarding,
}

/// Resource attributes the tracer sets for each traced process: the environment cannot
/// replace them, or every service would carry one name.
const OWN_RESOURCE_KEYS: [&str; 3] = ["service.name", "process.pid", "host.name"];

/// The `OTEL_EXPORTER_OTLP_[TRACES_]*` settings read, by suffix.
const OTLP_SETTINGS: [&str; 8] = [
    "ENDPOINT",
    "PROTOCOL",
    "HEADERS",
    "CERTIFICATE",
    "CLIENT_CERTIFICATE",
    "CLIENT_KEY",
    "TIMEOUT",
    "INSECURE",
];

impl OtelEnv {
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with("OTEL_"))
            .collect();
        Self { vars }
    }

    /// A variable that is set to something other than blanks.
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// An OTLP setting: the traces-specific variable, else the general one; with its name.
    fn otlp(&self, setting: &str) -> Option<(String, &str)> {
        [
            format!("OTEL_EXPORTER_OTLP_TRACES_{setting}"),
            format!("OTEL_EXPORTER_OTLP_{setting}"),
        ]
        .into_iter()
        .find_map(|name| self.get(&name).map(|v| (name.clone(), v)))
    }

    /// Every OTLP exporter variable that is set, by name.
    fn otlp_names(&self) -> Vec<String> {
        OTLP_SETTINGS
            .iter()
            .flat_map(|s| {
                [
                    format!("OTEL_EXPORTER_OTLP_TRACES_{s}"),
                    format!("OTEL_EXPORTER_OTLP_{s}"),
                ]
            })
            .filter(|name| self.get(name).is_some())
            .collect()
    }

    fn is_read(name: &str) -> bool {
        matches!(
            name,
            "OTEL_TRACES_EXPORTER" | "OTEL_SERVICE_NAME" | "OTEL_RESOURCE_ATTRIBUTES"
        ) || OTLP_SETTINGS.iter().any(|s| {
            name == format!("OTEL_EXPORTER_OTLP_TRACES_{s}")
                || name == format!("OTEL_EXPORTER_OTLP_{s}")
        })
    }
}

impl ExportConfig {
    /// [`Self::apply_env`] with this process's variables, the warnings logged.
    pub fn apply_process_env(
        &mut self,
        cli: Option<ExportKind>,
        usage: ExportUse,
    ) -> Result<(), String> {
        for warning in self.apply_env(&OtelEnv::from_process(), cli, usage)? {
            tracing::warn!("{warning}");
        }
        Ok(())
    }

    /// Applies the environment over the file. Precedence of where spans go: `--export`
    /// (`cli`), then `OTEL_TRACES_EXPORTER`, then an OTLP endpoint variable (which alone means
    /// OTLP, over gRPC unless `OTEL_EXPORTER_OTLP_PROTOCOL` or the file says HTTP), then the
    /// file. Returns the warnings to log; a value that cannot be used is an error.
    pub fn apply_env(
        &mut self,
        env: &OtelEnv,
        cli: Option<ExportKind>,
        usage: ExportUse,
    ) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        for name in env.vars.keys().filter(|n| !OtelEnv::is_read(n)) {
            warnings.push(format!(
                "{name} is set but Order Tracer does not read it; it has no effect"
            ));
        }
        self.apply_resource_env(env, usage, &mut warnings);
        if usage == ExportUse::Forwarding {
            for name in env.otlp_names().into_iter().chain(
                env.get("OTEL_TRACES_EXPORTER")
                    .map(|_| "OTEL_TRACES_EXPORTER".into()),
            ) {
                warnings.push(format!(
                    "{name} is set but `tracer monitor` has no exporter of its own; it has no \
                     effect (spans go upstream with --forward-to)"
                ));
            }
            return Ok(warnings);
        }
        let from_env = match env.get("OTEL_TRACES_EXPORTER") {
            None => None,
            Some("otlp") => Some(None),
            Some("console") => Some(Some(ExportKind::Stdout)),
            Some("none") => Some(Some(ExportKind::None)),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: use otlp, console or none"
                ));
            }
        };
        let endpoint_set = env.otlp("ENDPOINT").is_some();
        let protocol = match env.otlp("PROTOCOL") {
            None => None,
            Some((_, "grpc")) => Some(ExportKind::OtlpGrpc),
            Some((_, "http/protobuf")) => Some(ExportKind::OtlpHttp),
            Some((name, other)) => {
                return Err(format!(
                    "{name}={other:?} is not supported; use grpc or http/protobuf"
                ));
            }
        };
        // The OTLP flavour when something asks for OTLP without naming one.
        let otlp = protocol.unwrap_or(if self.kind.is_otlp() {
            self.kind
        } else {
            ExportKind::OtlpGrpc
        });
        let (kind, decided_by) = match (cli, from_env) {
            (Some(kind), _) => (kind, "--export"),
            (None, Some(Some(kind))) => (kind, "OTEL_TRACES_EXPORTER"),
            (None, Some(None)) => (otlp, "OTEL_TRACES_EXPORTER"),
            (None, None) if endpoint_set => (otlp, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (None, None) => (self.kind, "the config's [export] kind"),
        };
        self.kind = kind;
        if cli.is_some() && from_env.is_some() {
            warnings.push(format!(
                "OTEL_TRACES_EXPORTER is set but --export {} decides; it has no effect",
                kind.name()
            ));
        }
        if !kind.is_otlp() {
            for name in env.otlp_names() {
                warnings.push(format!(
                    "{name} is set but spans go to {} ({decided_by}); it has no effect",
                    kind.name()
                ));
            }
            return Ok(warnings);
        }
        if let Some((name, _)) = env.otlp("PROTOCOL")
            && protocol != Some(kind)
        {
            warnings.push(format!(
                "{name} is set but --export {} decides the protocol; it has no effect",
                kind.name()
            ));
        }
        self.apply_otlp_env(env)?;
        self.validate()?;
        Ok(warnings)
    }

    fn apply_otlp_env(&mut self, env: &OtelEnv) -> Result<(), String> {
        if let Some(endpoint) = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.endpoint = Some(endpoint.to_string());
        } else if let Some(base) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            // The general endpoint is a base URL: the HTTP signal path goes after it.
            let base = base.trim_end_matches('/');
            self.endpoint = Some(match self.kind {
                ExportKind::OtlpHttp => format!("{base}/v1/traces"),
                _ => base.to_string(),
            });
        }
        if let Some((name, headers)) = env.otlp("HEADERS") {
            for pair in headers.split(',').filter(|p| !p.trim().is_empty()) {
                let (key, value) = pair.split_once('=').ok_or_else(|| {
                    format!("{name}: expected name=value pairs separated by commas")
                })?;
                let value = crate::orders::percent_decode_lossy(value.trim()).into_owned();
                self.headers.insert(key.trim().to_ascii_lowercase(), value);
            }
        }
        if let Some((_, path)) = env.otlp("CERTIFICATE") {
            self.ca_file = Some(PathBuf::from(path));
        }
        if let Some((_, path)) = env.otlp("CLIENT_CERTIFICATE") {
            self.client_cert = Some(PathBuf::from(path));
        }
        if let Some((_, path)) = env.otlp("CLIENT_KEY") {
            self.client_key = Some(PathBuf::from(path));
        }
        if let Some((name, ms)) = env.otlp("TIMEOUT") {
            self.timeout_ms = ms
                .parse()
                .map_err(|_| format!("{name}={ms:?}: expected milliseconds"))?;
        }
        if let Some((_, insecure)) = env.otlp("INSECURE") {
            self.insecure = insecure.eq_ignore_ascii_case("true");
        }
        Ok(())
    }

    /// `OTEL_RESOURCE_ATTRIBUTES` joins (and overrides) `resource_attributes`;
    /// `OTEL_SERVICE_NAME` (or the `service.name` given there) names the tracer's own spans.
    fn apply_resource_env(&mut self, env: &OtelEnv, usage: ExportUse, warnings: &mut Vec<String>) {
        let mut own_name = None;
        if let Some(text) = env.get("OTEL_RESOURCE_ATTRIBUTES") {
            match parse_resource_attributes(text) {
                Ok(pairs) => {
                    for (key, value) in pairs {
                        if key == "service.name" {
                            own_name = Some(value);
                        } else if OWN_RESOURCE_KEYS.contains(&key.as_str()) {
                            warnings.push(format!(
                                "OTEL_RESOURCE_ATTRIBUTES sets {key}, which the tracer sets for \
                                 each traced process; it has no effect"
                            ));
                        } else {
                            self.resource_attributes.insert(key, value);
                        }
                    }
                }
                Err(e) => warnings.push(format!(
                    "OTEL_RESOURCE_ATTRIBUTES is not used: {e} (expected key=value pairs \
                     separated by commas, values percent-encoded)"
                )),
            }
        }
        let service_name = env.get("OTEL_SERVICE_NAME").map(String::from);
        let (name, origin) = match (service_name, own_name) {
            (Some(name), _) => (name, "OTEL_SERVICE_NAME"),
            (None, Some(name)) => (name, "OTEL_RESOURCE_ATTRIBUTES service.name"),
            (None, None) => return,
        };
        if usage == ExportUse::Agent {
            warnings.push(format!(
                "{origin} is set but `tracer agent` exports only the traced services' spans, \
                 each named by its [[capture.target]] service; it has no effect (it names the \
                 monitor's own spans in `tracer run` and `tracer monitor`)"
            ));
        } else {
            self.service_name = Some(name);
        }
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C Baggage's octets); all or
/// nothing, as the specification asks of a malformed value.
fn parse_resource_attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{:?} has no '='", pair.trim()))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("{:?} has no key", pair.trim()));
            }
            let value = crate::orders::percent_decode_lossy(value.trim()).into_owned();
            Ok((key.to_string(), value))
        })
        .collect()
}
