//! HTTP/1.x: push parsing of reassembled streams into messages, and pairing of each request
//! with its response into an [`Exchange`].
//!
//! The parts, in the order bytes flow through them: `head` (httparse into owned heads and
//! the framing they declare), `body` (Content-Length, chunked and close-delimited bodies,
//! with capture gaps), `decoder` (one direction's push parser: head, body, end), `resync`
//! (finding the next message start in a stream entered mid-way), `pair` (requests matched
//! with responses into exchanges), `stream` (one connection's two directions, the entry
//! point). The `streams` stage owns the bytes and drives a [`stream::Stream`] per connection.

pub(crate) mod body;
pub(crate) mod decoder;
#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod head;
pub(crate) mod pair;
pub(crate) mod resync;
pub(crate) mod stream;
mod text;

pub(crate) use crate::protocol::Input;
pub use head::HeaderFilter;
pub use pair::PairCounters;
pub use stream::Counters;
pub use text::Text;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::capture::{ConnKey, Role};

/// One request and (when it came) its response, on one connection, from one side.
///
/// Bodies are kept only as a bounded prefix, in memory, for the order rules to read JSON
/// fields from; they never leave the agent.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub conn: ConnKey,
    pub service: Arc<str>,
    /// `Server`: the traced process answered; `Client`: it called.
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Decrypted: read through the TLS library's probes.
    pub tls: bool,
    pub request: Message<RequestHead>,
    pub response: Option<Message<ResponseHead>>,
    /// CLOCK_MONOTONIC ns of the first byte of the request.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns of the last byte of the response (or when the exchange was given up).
    pub end_ns: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response complete.
    Complete,
    /// The connection closed before a (complete) response.
    Reset,
    /// No response within the configured limit.
    Timeout,
}

#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Text,
    /// Request target as sent: path and query.
    pub target: Text,
}

#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
}

/// A parsed message: head, the headers something downstream reads, and the body when it is
/// small enough to read fields from.
#[derive(Clone, Debug)]
pub struct Message<H> {
    pub head: H,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// (name, value) as sent, of the headers the parser's [`HeaderFilter`] keeps (the ones
    /// rules and span attributes read); the others are only looked at for framing.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The decoded body (chunked framing removed) when it was captured whole within the
    /// configured limit; empty otherwise (`body_truncated`): a cut JSON body has no fields to
    /// read, so none is kept.
    pub body: Bytes,
    /// The body's full decoded length.
    pub body_len: u64,
    /// Some body bytes were not captured (payload cap) or not kept (body limit).
    pub body_truncated: bool,
}

impl<H> Message<H> {
    /// An HTTP/1.1 message with a head and nothing else (no headers, no body).
    pub fn bare(head: H) -> Self {
        Message {
            head,
            version: 1,
            headers: Vec::new(),
            body: Bytes::new(),
            body_len: 0,
            body_truncated: false,
        }
    }

    /// The first value of a header, by name (any case).
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }
}

impl Exchange {
    /// Status code of the response, when one came.
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.head.status)
    }

    /// Time from the request's first byte to the response's last (or to giving up).
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// Which kind of message a direction of a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Response,
}
