//! The testbed's request and message logs against the spans the tracer exported: every
//! exchange (or message) one span with the same service, side, route (or exchange and routing
//! key), outcome and order, and nothing else. Include it beside `otlp_receiver.rs`.

use std::collections::{BTreeMap, BTreeSet};

use testbed::Service;
use testbed::messagelog::{MessageLogRecord, MessageOutcome, MessageSide};
use testbed::requestlog::{RequestLogRecord, Side};

use crate::otlp_receiver::ReceivedSpan;

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
pub const SPAN_KIND_PRODUCER: i32 = 4;
pub const SPAN_KIND_CONSUMER: i32 = 5;

/// What one side of one exchange (or message) looks like, from the request (or message)
/// log or from a span. For a message: `method` is the exchange, `path` the routing key,
/// `outcome` how it was settled.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    service: String,
    side: &'static str,
    method: String,
    path: String,
    status_code: Option<u16>,
    order_id: Option<String>,
    outcome: Option<&'static str>,
}

fn from_log(record: &RequestLogRecord) -> Seen {
    Seen {
        service: record.service.as_str().to_string(),
        side: match record.side {
            Side::Server => "server",
            Side::Client => "client",
        },
        method: record.method.clone(),
        path: record.path.clone(),
        status_code: record.status_code,
        order_id: record.order_id.clone(),
        outcome: None,
    }
}

fn from_message_log(record: &MessageLogRecord) -> Seen {
    Seen {
        service: record.service.as_str().to_string(),
        side: match record.side {
            MessageSide::Publish => "producer",
            MessageSide::Consume => "consumer",
        },
        method: record.exchange.clone(),
        path: record.routing_key.clone(),
        status_code: None,
        order_id: Some(record.order_id.clone()),
        outcome: Some(match record.outcome {
            MessageOutcome::Acked => "acked",
            MessageOutcome::Returned => "returned",
            MessageOutcome::Nacked => "nack",
            // The agent gives a delivery never acknowledged up after its ack timeout.
            MessageOutcome::Unacked => "timeout",
        }),
    }
}

fn from_span(span: &ReceivedSpan) -> Seen {
    let message = span.attr("messaging.system").is_some();
    let (method, path) = if message {
        (
            span.attr("messaging.destination.name").unwrap_or_default(),
            span.attr("messaging.rabbitmq.destination.routing_key")
                .unwrap_or_default(),
        )
    } else {
        (
            span.attr("http.request.method").unwrap_or_default(),
            span.attr("url.path").unwrap_or_default(),
        )
    };
    Seen {
        service: span.resource_attr("service.name").unwrap_or_default(),
        side: match span.span.kind {
            SPAN_KIND_SERVER => "server",
            SPAN_KIND_CLIENT => "client",
            SPAN_KIND_PRODUCER => "producer",
            SPAN_KIND_CONSUMER => "consumer",
            _ => "other",
        },
        method,
        path,
        status_code: span
            .attr("http.response.status_code")
            .and_then(|s| s.parse().ok()),
        order_id: span.attr("order.id"),
        outcome: message.then(|| match span.attr("error.type").as_deref() {
            None => "acked",
            Some("returned") => "returned",
            Some("nack") => "nack",
            Some("timeout") => "timeout",
            Some(_) => "other",
        }),
    }
}

/// What the traced services logged: each side of each exchange and each message.
pub fn expected(log: &[RequestLogRecord], messages: &[MessageLogRecord]) -> Vec<Seen> {
    log.iter()
        .filter(|r| r.service != Service::Queue)
        .map(from_log)
        .chain(messages.iter().map(from_message_log))
        .collect()
}

/// The spans of this run's orders (the agent traces every testbed on the machine).
pub fn of_orders(spans: Vec<ReceivedSpan>, orders: &BTreeSet<&str>) -> Vec<ReceivedSpan> {
    spans
        .into_iter()
        .filter(|s| {
            s.attr("order.id")
                .is_some_and(|id| orders.contains(id.as_str()))
        })
        .collect()
}

fn multiset(items: impl Iterator<Item = Seen>) -> BTreeMap<Seen, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

/// `None` when the spans are the logged exchanges one for one, else what differs (the first
/// ten missing and extra of each).
pub fn differences(expected: &[Seen], spans: &[ReceivedSpan]) -> Option<String> {
    let want = multiset(expected.iter().cloned());
    let got = multiset(spans.iter().map(from_span));
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k).copied().unwrap_or(0) < **n)
        .take(10)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, n)| want.get(*k).copied().unwrap_or(0) < **n)
        .take(10)
        .collect();
    (!missing.is_empty() || !extra.is_empty()).then(|| {
        format!(
            "spans differ from the logs ({} expected, {} spans)\nmissing: {missing:#?}\nextra: {extra:#?}",
            expected.len(),
            spans.len()
        )
    })
}
