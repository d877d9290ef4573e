//! Spans: one span per HTTP exchange and side, and per broker message and side (OpenTelemetry
//! messaging conventions), grouped into one trace per order.
//!
//! [`SpanRecord`] is the interchange type between the pipeline, the exporters and the
//! lifecycle monitor (which also rebuilds it from OTLP it receives).

mod attributes;
mod build;
pub mod fixtures;
mod ids;

pub use attributes::{AttrKey, Attributes};
pub use ids::{order_root_span_id, order_trace_id};

pub use build::{
    DEFAULT_REDACT_PATTERNS, MatchOutcome, REDACTED, RecordRef, Redactor, SpanBuilder,
    local_host_name,
};

/// Span kind, as in OpenTelemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Server,
    Client,
    Internal,
    /// A message sent to a broker (AMQP publish).
    Producer,
    /// A message received from a broker and processed (AMQP delivery, get).
    Consumer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

/// An attribute value (the subset of OpenTelemetry's `AnyValue` the tracer emits).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanLink {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Attributes,
}

/// One finished span with everything an exporter or the monitor needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub links: Vec<SpanLink>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: SpanStatus,
    /// Resource attributes: `service.name`, `process.pid`, `host.name`, …
    pub resource: Attributes,
    /// Span attributes: OpenTelemetry HTTP conventions plus `order.id`, `order.status`.
    pub attributes: Attributes,
    pub events: Vec<SpanEvent>,
}
