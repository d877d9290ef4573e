//! The stage fed with capture events as the capture stage makes them: testbed conversations
//! split everywhere, truncated at a cap, cut, entered mid-way, and garbage.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::capture::event::{ConnClose, ConnOpen, DataChunk};
use crate::capture::{CaptureEvent, ConnKey, Direction, Role};
use crate::http::fixtures::Write;
use crate::http::{Exchange, Kind, Outcome};
use crate::protocol::Record;

mod budget;
mod conversations;
mod damage;
mod property;
mod protocols;

pub(super) const STEP_NS: u64 = 10;

pub(super) fn key(fd: i32) -> ConnKey {
    ConnKey {
        pid: 42,
        fd,
        conn_id: fd as u64,
    }
}

pub(super) fn open(conn: ConnKey, role: Role, ts_ns: u64) -> CaptureEvent {
    CaptureEvent::Open(ConnOpen {
        conn,
        service: Arc::from("shop-api"),
        role,
        local: None,
        peer: None,
        ts_ns,
    })
}

/// Captured bytes `payload` of a syscall that moved `len` bytes.
pub(super) fn data(
    conn: ConnKey,
    direction: Direction,
    ts_ns: u64,
    payload: &[u8],
    len: usize,
) -> CaptureEvent {
    CaptureEvent::Data(DataChunk {
        conn,
        service: Arc::from("shop-api"),
        tid: 1,
        direction,
        ts_ns,
        len: len as u64,
        payload: Bytes::copy_from_slice(payload),
        tls: false,
    })
}

pub(super) fn close(conn: ConnKey, ts_ns: u64) -> CaptureEvent {
    CaptureEvent::Close(ConnClose {
        conn,
        service: Arc::from("shop-api"),
        ts_ns,
    })
}

/// The way a write of `kind` goes, seen from a process in `role`.
pub(super) fn direction(role: Role, kind: Kind) -> Direction {
    match (role, kind) {
        (Role::Server, Kind::Request) | (Role::Client, Kind::Response) => Direction::Recv,
        _ => Direction::Send,
    }
}

/// What an exchange says, in comparable form.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Seen {
    pub(super) role: Role,
    pub(super) method: String,
    pub(super) target: String,
    pub(super) request_body: Vec<u8>,
    pub(super) request_len: u64,
    pub(super) request_truncated: bool,
    pub(super) status: Option<u16>,
    pub(super) response_body: Vec<u8>,
    pub(super) response_len: u64,
    pub(super) outcome: Outcome,
    pub(super) start_ns: u64,
    pub(super) end_ns: u64,
}

pub(super) fn seen(e: &Exchange) -> Seen {
    Seen {
        role: e.role,
        method: e.request.head.method.to_string(),
        target: e.request.head.target.to_string(),
        request_body: e.request.body.to_vec(),
        request_len: e.request.body_len,
        request_truncated: e.request.body_truncated,
        status: e.status(),
        response_body: e
            .response
            .as_ref()
            .map(|r| r.body.to_vec())
            .unwrap_or_default(),
        response_len: e.response.as_ref().map_or(0, |r| r.body_len),
        outcome: e.outcome,
        start_ns: e.start_ns,
        end_ns: e.end_ns,
    }
}

/// The HTTP exchanges among `records`.
pub(super) fn http(records: &[Record]) -> Vec<&Exchange> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Http(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub(super) struct Run {
    pub(super) streams: Streams,
    pub(super) out: Vec<Record>,
}

impl Run {
    pub(super) fn new(config: StreamsConfig) -> Self {
        Run {
            streams: Streams::new(config),
            out: Vec::new(),
        }
    }

    pub(super) fn feed(&mut self, ev: CaptureEvent) {
        self.streams.on_event(ev, &mut self.out);
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        http(&self.out).into_iter().map(seen).collect()
    }
}

/// Feeds `writes` on one connection opened in `role`, write `i` stamped `STEP_NS * (i + 1)`;
/// write `cut.0` split at byte `cut.1` into two events with the same stamp. Then closes.
pub(super) fn replay(role: Role, writes: &[Write], cut: Option<(usize, usize)>) -> Run {
    let conn = key(3);
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(conn, role, 0));
    for (i, (kind, bytes)) in writes.iter().enumerate() {
        let d = direction(role, *kind);
        let ts = STEP_NS * (i as u64 + 1);
        let parts: Vec<&[u8]> = match cut {
            Some((w, at)) if w == i => vec![&bytes[..at], &bytes[at..]],
            _ => vec![bytes],
        };
        for part in parts {
            run.feed(data(conn, d, ts, part, part.len()));
        }
    }
    run.feed(close(conn, STEP_NS * (writes.len() as u64 + 1)));
    run
}

/// Feeds writes whose captures are cut at `cap` bytes, as the kernel side delivers them.
pub(super) fn replay_capped(role: Role, writes: &[Write], cap: usize, mut run: Run) -> Run {
    let conn = key(5);
    run.feed(open(conn, role, 0));
    for (i, (kind, bytes)) in writes.iter().enumerate() {
        let captured = &bytes[..bytes.len().min(cap)];
        let ts = STEP_NS * (i as u64 + 1);
        run.feed(data(
            conn,
            direction(role, *kind),
            ts,
            captured,
            bytes.len(),
        ));
    }
    run
}
