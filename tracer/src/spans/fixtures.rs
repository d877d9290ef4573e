//! Hand-built [`Exchange`]s and [`Transfer`]s, for the tests and benchmarks of the stages
//! after the protocols (which take records, not bytes).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::amqp::{Operation, Properties, Settlement, Transfer};
use crate::capture::{ConnKey, Role};
use crate::http::{Exchange, Message, Outcome, RequestHead, ResponseHead};
use crate::protocol::ConnMeta;

/// Builds an exchange of `service`: the request is `method target`, no headers, no body.
/// The traced process is on `127.0.0.1:18080` when it answers, on `127.0.0.1:40000` when it
/// calls `127.0.0.1:18081`. Times are 1 ms apart, starting at 1 s of monotonic time.
pub fn exchange(service: &str, role: Role, method: &str, target: &str) -> Exchange {
    let (local, peer): (SocketAddr, SocketAddr) = match role {
        Role::Client => (
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:18081".parse().unwrap(),
        ),
        Role::Server | Role::Unknown => (
            "127.0.0.1:18080".parse().unwrap(),
            "127.0.0.1:40001".parse().unwrap(),
        ),
    };
    Exchange {
        conn: ConnKey {
            pid: 4242,
            fd: 7,
            conn_id: 1,
        },
        service: Arc::from(service),
        role,
        local: Some(local),
        peer: Some(peer),
        tls: false,
        request: Message::bare(RequestHead {
            method: method.into(),
            target: target.into(),
        }),
        response: None,
        start_ns: 1_000_000_000,
        end_ns: 1_001_000_000,
        outcome: Outcome::Reset,
    }
}

/// Builder-style setters on a fixture exchange.
pub trait ExchangeFixture: Sized {
    fn request_body(self, body: &str) -> Self;
    fn request_header(self, name: &str, value: &str) -> Self;
    /// A complete response with this status and body.
    fn respond(self, status: u16, body: &str) -> Self;
    fn outcome(self, outcome: Outcome) -> Self;
}

impl ExchangeFixture for Exchange {
    fn request_body(mut self, body: &str) -> Self {
        self.request.body = Bytes::copy_from_slice(body.as_bytes());
        self.request.body_len = body.len() as u64;
        self
    }

    fn request_header(mut self, name: &str, value: &str) -> Self {
        self.request.headers.push((
            Bytes::copy_from_slice(name.as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
        self
    }

    fn respond(mut self, status: u16, body: &str) -> Self {
        let mut response = Message::bare(ResponseHead { status });
        response.body = Bytes::copy_from_slice(body.as_bytes());
        response.body_len = body.len() as u64;
        self.response = Some(response);
        self.outcome = Outcome::Complete;
        self
    }

    fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
}

/// A message of `service` through the broker on `127.0.0.1:5672`: published, or delivered
/// from `queue` (for deliveries), acked, with no properties and no body. Times as for
/// [`exchange`].
pub fn message(
    service: &str,
    operation: Operation,
    exchange: &str,
    routing_key: &str,
    queue: Option<&str>,
) -> Transfer {
    Transfer {
        meta: ConnMeta {
            conn: ConnKey {
                pid: 4242,
                fd: 9,
                conn_id: 2,
            },
            service: Arc::from(service),
            role: Role::Client,
            local: Some("127.0.0.1:40002".parse().unwrap()),
            peer: Some("127.0.0.1:5672".parse().unwrap()),
            tls: false,
        },
        operation,
        channel: 1,
        exchange: Bytes::copy_from_slice(exchange.as_bytes()),
        routing_key: Bytes::copy_from_slice(routing_key.as_bytes()),
        queue: queue.map(|q| Bytes::copy_from_slice(q.as_bytes())),
        delivery_tag: Some(1),
        redelivered: false,
        properties: Properties::default(),
        body: Bytes::new(),
        body_len: 0,
        body_truncated: false,
        start_ns: 1_000_000_000,
        end_ns: 1_001_000_000,
        settlement: Settlement::Acked,
    }
}

/// Builder-style setters on a fixture message.
pub trait TransferFixture: Sized {
    /// Text properties (`message-id`, …) and text headers.
    fn properties(self, text: &[(&str, &str)], headers: &[(&str, &str)]) -> Self;
    fn body(self, body: &str) -> Self;
    fn settled(self, settlement: Settlement) -> Self;
}

impl TransferFixture for Transfer {
    fn properties(mut self, text: &[(&str, &str)], headers: &[(&str, &str)]) -> Self {
        self.properties = Properties::encode(text, headers);
        self
    }

    fn body(mut self, body: &str) -> Self {
        self.body = Bytes::copy_from_slice(body.as_bytes());
        self.body_len = body.len() as u64;
        self
    }

    fn settled(mut self, settlement: Settlement) -> Self {
        self.settlement = settlement;
        self
    }
}
