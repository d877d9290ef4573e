//! Streams: per-connection reassembly of captured bytes, handed to the protocol that claims
//! each connection.
//!
//! The agent feeds every [`CaptureEvent`] to [`Streams::on_event`] and calls
//! [`Streams::expire`] on a clock tick; finished [`Record`]s (HTTP exchanges, broker
//! messages) are appended to the caller's vector. Per connection and direction the bytes are
//! reassembled (reads split anywhere, many units per read) and parsed by the connection's
//! protocol (`http`, `amqp`), capture gaps are stepped over where the framing allows and
//! resynced on otherwise, and everything held is bounded by [`StreamsConfig`].

mod config;
mod conn;
#[cfg(test)]
mod tests;

use hashlink::LinkedHashMap;
use hashlink::linked_hash_map::{Entry, RawEntryMut};
use serde::Serialize;

pub use config::StreamsConfig;

use crate::capture::{CaptureEvent, ConnKey, Role};
use crate::http::HeaderFilter;
use crate::http::head::Limits;
use crate::protocol::{ConnMeta, Record};
use crate::{amqp, http};
use conn::Conn;

/// What the stage saw and dropped, for the agent's metrics. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamCounters {
    /// Capture events fed in.
    pub events: u64,
    /// Bytes the traced syscalls moved (captured or not).
    pub bytes: u64,
    /// Data events truncated at the capture cap.
    pub gaps: u64,
    /// Bytes missing because of those truncations.
    pub gap_bytes: u64,
    /// Times a direction's buffer passed `max_buffered_bytes` and was dropped.
    pub dropped_over_budget: u64,
    /// Connections forgotten to stay within `max_connections`.
    pub connections_evicted: u64,
    /// Connections forgotten after `idle_timeout_ms` without traffic.
    pub connections_expired: u64,
    /// Times a connection's buffers and messages being assembled were dropped whole to
    /// bring the stage back under `max_total_bytes` (largest holders first).
    pub connections_shed: u64,
    /// Bytes those connections held.
    pub shed_bytes: u64,
    /// HTTP requests dropped with them, their heads read whole or in part (no exchange is
    /// reported for them).
    pub shed_requests: u64,
    /// AMQP messages dropped with them, being assembled or waiting for their settlement (no
    /// transfer is reported for them).
    pub shed_messages: u64,
    #[serde(flatten)]
    pub http: http::Counters,
    pub amqp: amqp::Counters,
}

/// The per-connection state machine of the stage. See the module documentation.
pub struct Streams {
    config: StreamsConfig,
    limits: Limits,
    /// In order of last activity, least recent first: eviction takes the front.
    conns: LinkedHashMap<ConnKey, Conn>,
    /// The sum of the connections' `accounted` bytes.
    held: usize,
    counters: StreamCounters,
}

/// What a connection's handlers need besides the connection.
struct Env<'a> {
    config: &'a StreamsConfig,
    limits: &'a Limits,
    counters: &'a mut StreamCounters,
    out: &'a mut Vec<Record>,
}

impl Env<'_> {
    /// What the HTTP parser of a connection needs.
    fn http(&mut self) -> http::stream::Env<'_> {
        http::stream::Env {
            limits: self.limits,
            max_pending_requests: self.config.max_pending_requests,
            max_buffered_bytes: self.config.max_buffered_bytes,
            counters: &mut self.counters.http,
            out: self.out,
        }
    }

    /// What the AMQP parser of a connection needs.
    fn amqp(&mut self) -> amqp::Env<'_> {
        amqp::Env {
            max_frame_bytes: self.config.max_header_bytes,
            max_body_bytes: self.config.max_body_bytes,
            max_unsettled: self.config.max_unsettled_messages,
            max_buffered_bytes: self.config.max_buffered_bytes,
            counters: &mut self.counters.amqp,
            out: self.out,
        }
    }
}

impl Streams {
    /// `config` must have passed [`StreamsConfig::validate`].
    pub fn new(config: StreamsConfig) -> Self {
        Streams {
            limits: config.limits(),
            config,
            conns: LinkedHashMap::new(),
            held: 0,
            counters: StreamCounters::default(),
        }
    }

    /// Keeps only the named headers of each HTTP message (any case), instead of all: the
    /// ones the rules and span attributes read (`SpanBuilder::headers_read`).
    pub fn keeping_headers(mut self, names: HeaderFilter) -> Self {
        self.limits.headers = names;
        self
    }

    pub fn counters(&self) -> &StreamCounters {
        &self.counters
    }

    /// Connections currently followed.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held in reassembly buffers, over all connections (kept bodies not included).
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Conn::buffered_bytes).sum()
    }

    /// Bytes held against `max_total_bytes`: buffer allocations and the messages being
    /// assembled or (AMQP) waiting for their settlement, over all connections.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Feeds one capture event; records it completes are appended to `out`.
    pub fn on_event(&mut self, ev: CaptureEvent, out: &mut Vec<Record>) {
        self.counters.events += 1;
        let mut env = Env {
            config: &self.config,
            limits: &self.limits,
            counters: &mut self.counters,
            out,
        };
        match ev {
            CaptureEvent::Open(open) => {
                let meta = ConnMeta {
                    conn: open.conn,
                    service: open.service,
                    role: open.role,
                    local: open.local,
                    peer: open.peer,
                    tls: false,
                };
                // A reused key means the close was missed: finish the old connection first.
                if let Some(mut old) = self.conns.remove(&open.conn) {
                    self.held -= old.accounted;
                    old.close(open.ts_ns, &mut env);
                }
                let conn = Conn::new(meta, open.ts_ns);
                let conns = &mut self.conns;
                insert(
                    conns,
                    &mut self.held,
                    open.conn,
                    conn,
                    env.config,
                    env.counters,
                );
            }
            CaptureEvent::Data(chunk) => {
                env.counters.bytes += chunk.len;
                let missing = chunk.len.saturating_sub(chunk.payload.len() as u64);
                if missing > 0 {
                    env.counters.gaps += 1;
                    env.counters.gap_bytes += missing;
                }
                let conn = match self.conns.raw_entry_mut().from_key(&chunk.conn) {
                    RawEntryMut::Occupied(mut entry) => {
                        entry.to_back();
                        entry.into_mut()
                    }
                    // Traffic of a connection opened before the agent looked: which side
                    // is which is learnt from the first message start found.
                    RawEntryMut::Vacant(_) => {
                        let meta = ConnMeta {
                            conn: chunk.conn,
                            service: chunk.service.clone(),
                            role: Role::Unknown,
                            local: None,
                            peer: None,
                            tls: false,
                        };
                        let conn = Conn::new(meta, chunk.ts_ns);
                        let held = &mut self.held;
                        insert(
                            &mut self.conns,
                            held,
                            chunk.conn,
                            conn,
                            env.config,
                            env.counters,
                        )
                    }
                };
                conn.on_data(chunk, &mut env);
                account(&mut self.held, conn);
                if self.held > env.config.max_total_bytes {
                    shed(&mut self.conns, &mut self.held, &mut env);
                }
            }
            CaptureEvent::Close(close) => {
                if let Some(mut conn) = self.conns.remove(&close.conn) {
                    self.held -= conn.accounted;
                    conn.close(close.ts_ns, &mut env);
                }
            }
        }
    }

    /// Times out requests unanswered for `response_timeout_ms` and forgets connections idle
    /// for `idle_timeout_ms`, as of `now_ns` (CLOCK_MONOTONIC, like event timestamps).
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        let timeouts = conn::Timeouts {
            response_ns: self.config.response_timeout_ms.saturating_mul(1_000_000),
            ack_ns: self.config.ack_timeout_ms.saturating_mul(1_000_000),
        };
        let mut env = Env {
            config: &self.config,
            limits: &self.limits,
            counters: &mut self.counters,
            out,
        };
        for conn in self.conns.values_mut() {
            conn.expire(now_ns, &timeouts, &mut env);
            account(&mut self.held, conn);
        }
        let idle_ns = self.config.idle_timeout_ms.saturating_mul(1_000_000);
        while let Some((_, conn)) = self.conns.front() {
            if conn.last_ns().saturating_add(idle_ns) > now_ns {
                break;
            }
            if let Some((_, conn)) = self.conns.pop_front() {
                self.held -= conn.accounted;
            }
            self.counters.connections_expired += 1;
        }
    }
}

/// Brings the stage's total up to date with what `conn` holds now.
fn account(held: &mut usize, conn: &mut Conn) {
    let now = conn.held_bytes();
    *held = *held - conn.accounted + now;
    conn.accounted = now;
}

/// Over `max_total_bytes`: drops what the largest holders hold, whole, until the total is
/// down to three quarters of the budget, so that one scan makes room for many events.
fn shed(conns: &mut LinkedHashMap<ConnKey, Conn>, held: &mut usize, env: &mut Env<'_>) {
    let goal = env.config.max_total_bytes / 4 * 3;
    let mut holders: Vec<(usize, ConnKey)> = conns
        .iter()
        .filter(|(_, conn)| conn.accounted > 0)
        .map(|(key, conn)| (conn.accounted, *key))
        .collect();
    holders.sort_unstable_by_key(|(held, _)| std::cmp::Reverse(*held));
    for (_, key) in holders {
        if *held <= goal {
            break;
        }
        let Some(conn) = conns.get_mut(&key) else {
            continue;
        };
        let before = conn.accounted;
        let dropped = conn.shed(env);
        account(held, conn);
        env.counters.connections_shed += 1;
        env.counters.shed_bytes += before.saturating_sub(conn.accounted) as u64;
        env.counters.shed_requests += dropped.requests as u64;
        env.counters.shed_messages += dropped.messages as u64;
    }
}

/// Inserts a connection as the most recent, evicting the least recent beyond the bound.
fn insert<'m>(
    conns: &'m mut LinkedHashMap<ConnKey, Conn>,
    held: &mut usize,
    key: ConnKey,
    conn: Conn,
    config: &StreamsConfig,
    counters: &mut StreamCounters,
) -> &'m mut Conn {
    while conns.len() >= config.max_connections {
        let Some((_, evicted)) = conns.pop_front() else {
            break;
        };
        *held -= evicted.accounted;
        counters.connections_evicted += 1;
    }
    match conns.entry(key) {
        Entry::Occupied(mut entry) => {
            entry.insert(conn);
            entry.to_back();
            entry.into_mut()
        }
        Entry::Vacant(entry) => entry.insert(conn),
    }
}
