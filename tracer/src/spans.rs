//! Spans: one span per HTTP exchange and side, and per broker message and side (OpenTelemetry
//! messaging conventions), grouped into one trace per order.
//!
//! [`SpanRecord`] is the interchange type between the pipeline, the exporters and the
//! lifecycle monitor (which also rebuilds it from OTLP it receives).

use std::collections::BTreeMap;

mod build;
pub mod fixtures;

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
    pub attributes: BTreeMap<String, AttrValue>,
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
    pub resource: BTreeMap<String, AttrValue>,
    /// Span attributes: OpenTelemetry HTTP conventions plus `order.id`, `order.status`.
    pub attributes: BTreeMap<String, AttrValue>,
    pub events: Vec<SpanEvent>,
}

const TRACE_ID_DOMAIN: &[u8] = b"order-tracer/trace/v1:";
const ROOT_SPAN_DOMAIN: &[u8] = b"order-tracer/root/v1:";

/// The trace id of an order: the first 16 bytes of SHA-256(`order-tracer/trace/v1:` + id).
/// Stable across hosts, services and days, so every span that names the order lands in one
/// trace. In Python: `hashlib.sha256(b"order-tracer/trace/v1:" + oid.encode()).hexdigest()[:32]`.
pub fn order_trace_id(order_id: &str) -> [u8; 16] {
    let digest = domain_hash(TRACE_ID_DOMAIN, order_id);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    non_zero(&mut id);
    id
}

/// The span id of an order's root span (emitted by the lifecycle monitor): the first 8 bytes
/// of SHA-256(`order-tracer/root/v1:` + id). Exchange spans name it as their parent.
pub fn order_root_span_id(order_id: &str) -> [u8; 8] {
    let digest = domain_hash(ROOT_SPAN_DOMAIN, order_id);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    non_zero(&mut id);
    id
}

fn domain_hash(domain: &[u8], order_id: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(domain);
    hasher.update(order_id.as_bytes());
    hasher.finalize().into()
}

/// All-zero ids are invalid in OpenTelemetry; a digest that starts with 16 zero bytes is
/// practically impossible, but the fix-up keeps the function total.
fn non_zero(id: &mut [u8]) {
    if id.iter().all(|b| *b == 0)
        && let Some(last) = id.last_mut()
    {
        *last = 1;
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn trace_id_matches_the_documented_python_one_liner() {
        // python3 -c 'import hashlib; print(hashlib.sha256(b"order-tracer/trace/v1:ord-1").hexdigest()[:32])'
        assert_eq!(
            hex::encode(order_trace_id("ord-1")),
            "a5f2507f5c5d9a01f0653511f49b1326"
        );
        assert_eq!(hex::encode(order_root_span_id("ord-1")), "4be63fe819188f3b");
    }

    #[test]
    fn ids_differ_per_order_and_per_domain() {
        assert_ne!(order_trace_id("a"), order_trace_id("b"));
        assert_ne!(order_trace_id("a")[..8], order_root_span_id("a"));
    }
}
