//! The `[export]` section; the standard `OTEL_*` variables over it are in `env.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where spans go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ExportKind {
    /// OTLP over gRPC (a Collector, Jaeger, the central monitor).
    #[serde(rename = "otlp-grpc")]
    OtlpGrpc,
    /// OTLP over HTTP, protobuf body, `POST …/v1/traces`.
    #[serde(rename = "otlp-http")]
    OtlpHttp,
    /// One JSON object per line on standard output, for humans and tests.
    #[default]
    #[serde(rename = "stdout")]
    Stdout,
    /// Nothing leaves (the in-process monitor still sees every span).
    #[serde(rename = "none")]
    None,
}

impl ExportKind {
    pub fn is_otlp(self) -> bool {
        matches!(self, ExportKind::OtlpGrpc | ExportKind::OtlpHttp)
    }

    /// The name `--export` and the config file use.
    pub fn name(self) -> &'static str {
        match self {
            ExportKind::OtlpGrpc => "otlp-grpc",
            ExportKind::OtlpHttp => "otlp-http",
            ExportKind::Stdout => "stdout",
            ExportKind::None => "none",
        }
    }
}

/// The `[export]` section. Every field has a default; the standard `OTEL_*` variables
/// override the file (see [`ExportConfig::apply_env`]).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    #[serde(default)]
    pub kind: ExportKind,
    /// The full URL spans are sent to. Defaults: `http://localhost:4317` (gRPC) and
    /// `http://localhost:4318/v1/traces` (HTTP); an HTTP endpoint with no path gets
    /// `/v1/traces`. `https://` turns TLS on.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Extra request headers (gRPC metadata), e.g. an authorization token. Never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA certificates that sign the endpoint's certificate; the system's
    /// roots are used when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for endpoints that require mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Allow plain `http://` to an endpoint off this host. Off by default: spans name orders,
    /// and leave the host only encrypted unless someone decided otherwise.
    #[serde(default)]
    pub insecure: bool,
    /// Per-request timeout, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Spans waiting for export; beyond it new spans are dropped and counted, never waited for.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Bytes the spans waiting for export may hold (estimated from their names and
    /// attributes), the batch being sent or retried included; beyond it new spans are dropped
    /// and counted (`dropped_queue_bytes`). Bounds the agent's memory when spans are large
    /// and the endpoint is down.
    #[serde(default = "default_max_queue_bytes")]
    pub max_queue_bytes: usize,
    /// Most spans per export request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A partial batch is sent after this long, in milliseconds.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
    /// Attempts after the first for a batch that failed in a retryable way (endpoint down,
    /// overloaded); the wait doubles from `retry_backoff_ms`, capped at 30 s.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Regular expressions for URL path segments that look like personal data; matching
    /// segments are exported as `{redacted}`. Defaults: e-mail addresses, runs of 9+ digits.
    #[serde(default = "default_redact")]
    pub redact_path_segments: Vec<String>,
    /// Attributes added to the resource of every span exported (e.g. `deployment.environment`),
    /// after `OTEL_RESOURCE_ATTRIBUTES`. The tracer's own per-process attributes
    /// (`service.name`, `process.pid`, `host.name`) are never replaced.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// `service.name` of the spans the tracer makes as itself: the orders' root spans
    /// (`OTEL_SERVICE_NAME` overrides it). Default: `order-tracer-monitor`.
    #[serde(default)]
    pub service_name: Option<String>,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_queue_size() -> usize {
    65_536
}
fn default_max_queue_bytes() -> usize {
    32 << 20
}
/// Room for one large span: a smaller byte bound would drop them all.
const MIN_QUEUE_BYTES: usize = 64 * 1024;
fn default_batch_size() -> usize {
    512
}
fn default_flush_ms() -> u64 {
    1_000
}
fn default_retries() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    250
}
fn default_redact() -> Vec<String> {
    crate::spans::DEFAULT_REDACT_PATTERNS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            kind: ExportKind::default(),
            endpoint: None,
            headers: BTreeMap::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            insecure: false,
            timeout_ms: default_timeout_ms(),
            queue_size: default_queue_size(),
            max_queue_bytes: default_max_queue_bytes(),
            batch_size: default_batch_size(),
            flush_interval_ms: default_flush_ms(),
            max_retries: default_retries(),
            retry_backoff_ms: default_backoff_ms(),
            redact_path_segments: default_redact(),
            resource_attributes: BTreeMap::new(),
            service_name: None,
        }
    }
}

/// Header values are credentials: shown as `***`.
impl fmt::Debug for ExportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> =
            self.headers.keys().map(|k| (k.as_str(), "***")).collect();
        f.debug_struct("ExportConfig")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("headers", &headers)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("insecure", &self.insecure)
            .field("timeout_ms", &self.timeout_ms)
            .field("queue_size", &self.queue_size)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("batch_size", &self.batch_size)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("redact_path_segments", &self.redact_path_segments)
            .field("resource_attributes", &self.resource_attributes)
            .field("service_name", &self.service_name)
            .finish()
    }
}

impl ExportConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("timeout_ms", self.timeout_ms),
            ("queue_size", self.queue_size as u64),
            ("batch_size", self.batch_size as u64),
            ("flush_interval_ms", self.flush_interval_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("export: {name} must be above 0"));
            }
        }
        if self.queue_size > 10_000_000 || self.batch_size > self.queue_size {
            return Err("export: keep batch_size <= queue_size <= 10000000".into());
        }
        if self.max_queue_bytes < MIN_QUEUE_BYTES {
            return Err(format!(
                "export: max_queue_bytes ({}) must be at least {MIN_QUEUE_BYTES}: room for a \
                 large span",
                self.max_queue_bytes
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(
                "export: client_cert and client_key go together; set both or neither".into(),
            );
        }
        crate::spans::Redactor::new(&self.redact_path_segments)
            .map_err(|e| format!("export: {e}"))?;
        for name in self.headers.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "export: header name {name:?} is not a valid HTTP header name"
                ));
            }
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err("export: service_name, when given, must not be empty".into());
        }
        if self.kind.is_otlp() {
            self.endpoint_url()?;
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The URL requests go to, defaults and `/v1/traces` applied, checked for TLS policy.
    pub fn endpoint_url(&self) -> Result<String, String> {
        let url = match (self.kind, &self.endpoint) {
            (ExportKind::OtlpGrpc, Some(e)) => e.clone(),
            (ExportKind::OtlpGrpc, None) => "http://localhost:4317".into(),
            (ExportKind::OtlpHttp, Some(e)) => {
                let after_scheme = e.split_once("://").map_or("", |(_, rest)| rest);
                if after_scheme.trim_end_matches('/').contains('/') {
                    e.clone()
                } else {
                    format!("{}/v1/traces", e.trim_end_matches('/'))
                }
            }
            (ExportKind::OtlpHttp, None) => "http://localhost:4318/v1/traces".into(),
            _ => return Err("export: no endpoint for this kind".into()),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("export: endpoint {url:?} needs a scheme, http:// or https://")
        })?;
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let host = host
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && !p.contains(']'))
            .map_or(host, |(h, _)| h);
        match scheme {
            "https" => {}
            "http" if self.insecure || is_loopback(host) => {}
            "http" => {
                return Err(format!(
                    "export: endpoint {url:?} is plain http off this host; use https://, or set insecure = true \
                     (OTEL_EXPORTER_OTLP_INSECURE=true) if the network is trusted"
                ));
            }
            other => {
                return Err(format!(
                    "export: endpoint scheme {other:?} is not supported; use http:// or https://"
                ));
            }
        }
        if self.ca_file.is_some() && scheme != "https" {
            return Err("export: ca_file is set but the endpoint is not https://".into());
        }
        Ok(url)
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
