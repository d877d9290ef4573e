//! The order's root span: one span over the order's whole life, parent of every exchange
//! span (their parent id is derived from the order id), so Jaeger shows one trace per order.

use crate::spans::Attributes;

use super::{DetectionKind, OrderState};
use crate::spans::{
    AttrValue, SpanEvent, SpanKind, SpanRecord, SpanStatus, order_root_span_id, order_trace_id,
};

/// `service.name` of the spans the monitor itself emits.
pub const MONITOR_SERVICE: &str = "order-tracer-monitor";

/// Builds the root span of `order`, ending at `end` (its final status or when it was given
/// up). Status changes and detections are its events.
pub fn root_span(order: &OrderState, end: u64) -> SpanRecord {
    let mut events: Vec<SpanEvent> = order
        .history
        .iter()
        .map(|entry| SpanEvent {
            name: format!("status {}", entry.status),
            time_unix_nano: entry.at,
            attributes: Attributes::from([
                ("order.status".into(), AttrValue::Str(entry.status.clone())),
                ("order.owner".into(), AttrValue::Str(entry.service.clone())),
                ("order.rule".into(), AttrValue::Str(entry.rule.clone())),
                ("span.id".into(), AttrValue::Str(entry.span_id.clone())),
            ]),
        })
        .collect();
    events.extend(order.detections.iter().map(|d| SpanEvent {
        name: format!("detection {}", d.kind.as_str()),
        time_unix_nano: d.at,
        attributes: Attributes::from([
            ("detection.id".into(), AttrValue::Str(d.id.clone())),
            (
                "detection.kind".into(),
                AttrValue::Str(d.kind.as_str().into()),
            ),
            ("order.step".into(), AttrValue::Str(d.step.clone())),
            ("order.owner".into(), AttrValue::Str(d.service.clone())),
        ]),
    }));
    events.sort_by_key(|e| e.time_unix_nano);
    let troubled = order
        .detections
        .iter()
        .any(|d| d.kind.blocks() || d.kind == DetectionKind::Skipped);
    let mut attributes = Attributes::from([
        ("order.id".into(), AttrValue::Str(order.order_id.clone())),
        (
            "order.closed".into(),
            AttrValue::Bool(order.closed_at.is_some()),
        ),
        (
            "order.detections".into(),
            AttrValue::Int(order.detections.len() as i64),
        ),
    ]);
    if let Some(status) = &order.status {
        attributes.insert("order.status".into(), AttrValue::Str(status.clone()));
    }
    SpanRecord {
        trace_id: order_trace_id(&order.order_id),
        span_id: order_root_span_id(&order.order_id),
        parent_span_id: None,
        links: Vec::new(),
        name: format!("order {}", order.order_id),
        kind: SpanKind::Internal,
        start_unix_nano: order.first_seen.min(end),
        end_unix_nano: end,
        status: if troubled {
            SpanStatus::Error
        } else {
            SpanStatus::Ok
        },
        resource: Attributes::from([(
            "service.name".into(),
            AttrValue::Str(MONITOR_SERVICE.into()),
        )]),
        attributes,
        events,
    }
}
