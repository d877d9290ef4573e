//! AMQP 0-9-1 (RabbitMQ): push parsing of a connection's frames into messages, each paired
//! with its settlement into a [`Transfer`]: a publish with the broker's confirm or return, a
//! delivery (or `basic.get`) with the consumer's ack, nack or reject.
//!
//! The parts, in the order bytes flow through them: `wire` (frame layout, field tables, what a
//! well-formed frame looks like), `framer` (one direction's push parser: frames whole, bodies
//! in pieces, gaps stepped over by declared sizes), `method` (the methods and properties that
//! matter), `channel` (per channel: messages assembled, publishes waiting for confirms,
//! deliveries waiting for acks), `stream` (one connection, the entry point). `streams` owns
//! the bytes and hands a connection here once [`detect`] claims it.
//!
//! Fuzzing: [`stream::Stream`] takes arbitrary bytes per direction through the same calls
//! `streams` makes; `tests` drives it that way with every split of every exchange.

mod channel;
mod framer;
pub(crate) mod method;
pub(crate) mod stream;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod wire;

use bytes::Bytes;
use serde::Serialize;

use crate::protocol::ConnMeta;
pub use method::Properties;

/// What kind of hand-over a transfer was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `basic.publish`: the traced process sent the message to the broker.
    Publish,
    /// `basic.deliver`: the broker pushed the message to the traced consumer.
    Deliver,
    /// `basic.get`: the traced process pulled the message.
    Get,
}

/// How a message ended, as far as the connection showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The broker confirmed the publish (`basic.ack`), or the consumer acknowledged.
    Acked,
    /// Published on a channel without confirms: handed over, nothing more is known.
    Sent,
    /// Delivered to a consumer that does not acknowledge (`no-ack`): settled on delivery.
    AutoAcked,
    /// `basic.nack`: the broker refused the publish, or the consumer the delivery.
    Nacked { requeue: bool },
    /// `basic.reject` by the consumer.
    Rejected { requeue: bool },
    /// The broker returned the publish (`basic.return`, e.g. 312 NO_ROUTE).
    Returned { reply_code: u16 },
    /// The channel was closed (reply code) before the message was settled.
    ChannelClosed { reply_code: u16 },
    /// The connection closed before the message was settled.
    Reset,
    /// Not settled within `ack_timeout_ms`.
    Timeout,
}

impl Settlement {
    /// Settled the way the sender wanted.
    pub fn succeeded(self) -> bool {
        matches!(
            self,
            Settlement::Acked | Settlement::Sent | Settlement::AutoAcked
        )
    }
}

/// One message and how it was settled, on one connection of one traced process.
///
/// Properties and the body prefix stay in the agent: only what rules extract leaves it.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub meta: ConnMeta,
    pub operation: Operation,
    pub channel: u16,
    /// The exchange published to (for deliveries: the one it was published to).
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// The queue a delivery came from, when the consume or get was seen.
    pub queue: Option<Bytes>,
    /// The broker's delivery tag (deliveries), or the publish sequence number under confirms.
    pub delivery_tag: Option<u64>,
    pub redelivered: bool,
    pub properties: Properties,
    /// The first bytes of the body, up to `max_body_bytes`.
    pub body: Bytes,
    /// The body size the content header declared.
    pub body_len: u64,
    /// Some body bytes were not captured or not kept.
    pub body_truncated: bool,
    /// CLOCK_MONOTONIC ns of the method frame that began the message.
    pub start_ns: u64,
    /// When it was settled (or given up).
    pub end_ns: u64,
    pub settlement: Settlement,
}

impl Transfer {
    /// A text property (`message-id`, `correlation-id`, …).
    pub fn property(&self, name: &str) -> Option<Bytes> {
        self.properties.text(name)
    }

    /// A header of the message's `headers` table, as text (integers in decimal).
    pub fn header(&self, name: &str) -> Option<String> {
        match wire::table_get(&self.properties.headers()?, name)? {
            wire::FieldValue::Text(text) => String::from_utf8(text.to_vec()).ok(),
            wire::FieldValue::Int(n) => Some(n.to_string()),
            wire::FieldValue::Other => None,
        }
    }
}

/// What AMQP parsing saw and dropped, for the agent's metrics. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Connections recognised as AMQP (by the protocol header, or mid-stream by its frames).
    pub connections: u64,
    pub frames: u64,
    /// Transfers handed on, whatever their settlement.
    pub messages: u64,
    /// Times a direction lost its place and looked for two consecutive frames.
    pub resyncs: u64,
    /// Method or header frames larger than `max_header_bytes`, skipped.
    pub oversized_frames: u64,
    /// Messages whose method, header or body frames were lost (gaps, cut connections).
    pub incomplete_messages: u64,
    /// Acks, nacks, rejects and returns that matched no message seen.
    pub unpaired_settlements: u64,
    /// Messages dropped because a connection had `max_unsettled_messages` waiting already.
    pub unsettled_overflow: u64,
    /// Messages given up unsettled after `ack_timeout_ms`.
    pub timeouts: u64,
    /// Messages whose connection or channel closed before they were settled.
    pub resets: u64,
}

/// What the parser needs from the stage that drives it.
pub(crate) struct Env<'a> {
    /// Largest method or content-header frame parsed.
    pub max_frame_bytes: usize,
    /// Body bytes kept per message.
    pub max_body_bytes: usize,
    /// Messages waiting for a confirm or an ack, per connection.
    pub max_unsettled: usize,
    /// Bound of a direction's buffer (and so of a resync window).
    pub max_buffered_bytes: usize,
    pub counters: &'a mut Counters,
    pub out: &'a mut Vec<crate::protocol::Record>,
}

/// How a connection not yet claimed by any protocol looks to AMQP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detect {
    /// AMQP from `at` on; `preface`: the bytes begin with the protocol header.
    Claim { at: usize, preface: bool },
    /// Not (yet); `boundary`: the bytes end where a well-formed frame ends.
    No { boundary: bool },
}

/// How far into a chunk a frame start is looked for.
const DETECT_WINDOW: usize = 4096;

/// Whether a chunk of a connection no protocol has claimed is AMQP: the protocol header, or
/// two consecutive well-formed frames (the first may have ended the last chunk of the same
/// direction: `after_boundary`).
pub(crate) fn detect(payload: &[u8], after_boundary: bool) -> Detect {
    if payload.starts_with(wire::PREFACE) {
        return Detect::Claim {
            at: 0,
            preface: true,
        };
    }
    match wire::find_frames(payload, after_boundary, DETECT_WINDOW) {
        wire::Scan::Found { at } => Detect::Claim { at, preface: false },
        wire::Scan::NotFound { keep_from } => Detect::No {
            boundary: keep_from < payload.len()
                && wire::complete_frame(&payload[keep_from..]) == Some(payload.len() - keep_from),
        },
    }
}
