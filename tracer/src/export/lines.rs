//! The stdout exporter's format: one JSON object per span and line, ids in lower-case hex,
//! resource and attributes as flat maps under their OpenTelemetry names.

use crate::spans::Attributes;

use serde::Serialize;

use crate::spans::{SpanKind, SpanRecord, SpanStatus};

#[derive(Serialize)]
struct Line<'s> {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    links: Vec<LinkLine>,
    name: &'s str,
    kind: SpanKind,
    start_unix_nano: u64,
    end_unix_nano: u64,
    status: SpanStatus,
    resource: &'s Attributes,
    attributes: &'s Attributes,
}

#[derive(Serialize)]
struct LinkLine {
    trace_id: String,
    span_id: String,
}

/// Appends one span as a JSON line (newline included).
pub fn write_line(out: &mut Vec<u8>, span: &SpanRecord) {
    let line = Line {
        trace_id: hex::encode(span.trace_id),
        span_id: hex::encode(span.span_id),
        parent_span_id: span.parent_span_id.map(hex::encode),
        links: span
            .links
            .iter()
            .map(|l| LinkLine {
                trace_id: hex::encode(l.trace_id),
                span_id: hex::encode(l.span_id),
            })
            .collect(),
        name: &span.name,
        kind: span.kind,
        start_unix_nano: span.start_unix_nano,
        end_unix_nano: span.end_unix_nano,
        status: span.status,
        resource: &span.resource,
        attributes: &span.attributes,
    };
    // Serialising maps of strings and numbers into a Vec cannot fail; a NaN double becomes
    // null rather than an error in serde_json.
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}
