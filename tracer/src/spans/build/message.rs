//! The span of one broker message (OpenTelemetry messaging conventions for RabbitMQ): a
//! PRODUCER span from the publish to the broker's confirm, a CONSUMER span from the delivery
//! to the consumer's ack. A consumer span links to its producer span, whose id is a function
//! of the message itself, so the link holds across agents.

use super::{SpanContext, order_attributes, random_id};
use crate::amqp::{Operation, Settlement, Transfer};
use crate::orders::Classification;
use crate::spans::ids::OrderIds;
use crate::spans::{AttrValue, Attributes, SpanKind, SpanLink, SpanRecord, SpanStatus};

/// Body bytes that go into a message's span id: both sides capture at least these.
const FINGERPRINT_BODY: usize = 256;

impl SpanContext<'_> {
    /// The span of a message already classified; `ids`: its order's, when it has one.
    pub(super) fn message_span(
        &self,
        transfer: &Transfer,
        classification: &Classification<'_>,
        ids: Option<OrderIds>,
    ) -> SpanRecord {
        let order = match classification {
            Classification::Order(m) => Some(m),
            _ => None,
        };
        let (kind, operation_type, operation_name) = match transfer.operation {
            Operation::Publish => (SpanKind::Producer, "send", "publish"),
            Operation::Deliver => (SpanKind::Consumer, "process", "deliver"),
            Operation::Get => (SpanKind::Consumer, "receive", "get"),
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let exchange = text(&transfer.exchange);
        let queue = transfer.queue.as_deref().map(text);
        let mut attributes = Attributes::with_capacity(24);
        let mut put = |key: &'static str, value: AttrValue| {
            attributes.insert(key.into(), value);
        };
        put("messaging.system", "rabbitmq".into());
        put("messaging.operation.type", operation_type.into());
        put("messaging.operation.name", operation_name.into());
        put("messaging.destination.name", exchange.as_str().into());
        if !transfer.routing_key.is_empty() {
            let key = self.redactor.dotted(
                &text(&transfer.routing_key),
                order.map(|o| o.order_id.as_str()),
            );
            put("messaging.rabbitmq.destination.routing_key", key.into());
        }
        if let Some(queue) = &queue {
            put(
                "messaging.destination.subscription.name",
                queue.as_str().into(),
            );
        }
        if kind == SpanKind::Consumer
            && let Some(tag) = transfer.delivery_tag
        {
            put(
                "messaging.rabbitmq.message.delivery_tag",
                AttrValue::Int(tag as i64),
            );
        }
        for (attribute, property) in [
            ("messaging.message.id", "message-id"),
            ("messaging.message.conversation_id", "correlation-id"),
        ] {
            if let Some(value) = transfer.property(property) {
                put(attribute, text(&value[..value.len().min(128)]).into());
            }
        }
        put(
            "messaging.message.body.size",
            AttrValue::Int(transfer.body_len as i64),
        );
        if transfer.meta.tls {
            put(super::TLS_ATTRIBUTE, "tls".into());
        }
        if let Some(peer) = transfer.meta.peer {
            put("server.address", peer.ip().to_string().into());
            put("server.port", AttrValue::Int(peer.port().into()));
            put("network.peer.address", peer.ip().to_string().into());
            put("network.peer.port", AttrValue::Int(peer.port().into()));
        }
        let error_type = match transfer.settlement {
            Settlement::Acked | Settlement::Sent | Settlement::AutoAcked => None,
            Settlement::Nacked { .. } => Some("nack"),
            Settlement::Rejected { .. } => Some("reject"),
            Settlement::Returned { .. } => Some("returned"),
            Settlement::ChannelClosed { .. } => Some("channel_closed"),
            Settlement::Reset => Some("reset"),
            Settlement::Timeout => Some("timeout"),
        };
        if let Some(error_type) = error_type {
            put("error.type", error_type.into());
        }
        order_attributes(&mut attributes, classification, kind);
        let fingerprint = message_span_id(transfer);
        let (span_id, links) = match (kind, fingerprint) {
            (SpanKind::Producer, Some(id)) => (id, Vec::new()),
            (SpanKind::Producer, None) => (random_id(), Vec::new()),
            (_, producer) => (
                random_id(),
                producer
                    .zip(ids)
                    .map(|(span_id, ids)| SpanLink {
                        trace_id: ids.trace_id,
                        span_id,
                    })
                    .into_iter()
                    .collect(),
            ),
        };
        let (trace_id, parent_span_id) = match ids {
            Some(ids) => (ids.trace_id, Some(ids.root_span_id)),
            None => (random_id(), None),
        };
        let target = match (kind, &queue) {
            (SpanKind::Consumer, Some(queue)) => queue.clone(),
            _ if exchange.is_empty() => "amq.default".to_string(),
            _ => exchange,
        };
        let resource = Attributes::from([
            ("service.name".into(), transfer.meta.service.as_ref().into()),
            (
                "process.pid".into(),
                AttrValue::Int(transfer.meta.conn.pid.into()),
            ),
            ("host.name".into(), self.host_name.into()),
        ]);
        SpanRecord {
            trace_id,
            span_id,
            parent_span_id,
            links,
            name: format!("{operation_type} {target}"),
            kind,
            start_unix_nano: self.to_unix(transfer.start_ns),
            end_unix_nano: self.to_unix(transfer.end_ns.max(transfer.start_ns)),
            status: if error_type.is_some() {
                SpanStatus::Error
            } else {
                SpanStatus::Unset
            },
            resource,
            attributes,
            events: Vec::new(),
        }
    }
}

/// The producer span id of a message: the first 8 bytes of SHA-256 over what the publisher
/// sends and the consumer receives alike (exchange, routing key, message id, correlation id,
/// body size and first bytes). `None` when too little of the body was captured to tell.
pub fn message_span_id(transfer: &Transfer) -> Option<[u8; 8]> {
    use sha2::{Digest, Sha256};
    let prefix = (transfer.body_len as usize).min(FINGERPRINT_BODY);
    if transfer.body.len() < prefix {
        return None;
    }
    let mut hasher = Sha256::new();
    hasher.update(b"order-tracer/message/v1:");
    let message_id = transfer.property("message-id").unwrap_or_default();
    let correlation_id = transfer.property("correlation-id").unwrap_or_default();
    for part in [
        &transfer.exchange[..],
        &transfer.routing_key,
        &message_id,
        &correlation_id,
        &transfer.body[..prefix],
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(transfer.body_len.to_be_bytes());
    let digest = hasher.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    Some(id)
}
