//! What the fuzz targets share: captured connections fed to the streams stage as the kernel
//! side would deliver them.

use std::sync::Arc;

use bytes::Bytes;
use tracer::capture::event::{ConnClose, ConnOpen, DataChunk};
use tracer::capture::{CaptureEvent, ConnKey, Direction, Role};
use tracer::protocol::Record;
use tracer::streams::{Streams, StreamsConfig};

pub fn conn(fd: i32) -> ConnKey {
    ConnKey {
        pid: 4242,
        fd,
        conn_id: fd as u64,
    }
}

/// A streams stage with small bounds (so that short inputs reach them), fed events of one
/// service; what it yields collects in `out`.
pub struct Feed {
    pub streams: Streams,
    service: Arc<str>,
    pub out: Vec<Record>,
}

impl Feed {
    pub fn new(service: &str) -> Self {
        Self {
            streams: Streams::new(StreamsConfig {
                max_connections: 4,
                max_buffered_bytes: 64 * 1024,
                max_header_bytes: 2048,
                max_headers: 16,
                max_body_bytes: 4096,
                max_pending_requests: 4,
                ..StreamsConfig::default()
            }),
            service: Arc::from(service),
            out: Vec::new(),
        }
    }

    pub fn open(&mut self, key: ConnKey, role: Role) {
        let event = CaptureEvent::Open(ConnOpen {
            conn: key,
            service: self.service.clone(),
            role,
            local: None,
            peer: None,
            ts_ns: 1,
        });
        self.streams.on_event(event, &mut self.out);
    }

    /// One read or write; `len` larger than the payload is a capture cut (the kernel copied
    /// a prefix).
    pub fn data(
        &mut self,
        key: ConnKey,
        direction: Direction,
        ts_ns: u64,
        payload: &[u8],
        len: u64,
    ) {
        let event = CaptureEvent::Data(DataChunk {
            conn: key,
            service: self.service.clone(),
            tid: 1,
            direction,
            ts_ns,
            len: len.max(payload.len() as u64),
            payload: Bytes::copy_from_slice(payload),
            tls: false,
        });
        self.streams.on_event(event, &mut self.out);
    }

    pub fn close(&mut self, key: ConnKey, ts_ns: u64) {
        let event = CaptureEvent::Close(ConnClose {
            conn: key,
            service: self.service.clone(),
            ts_ns,
        });
        self.streams.on_event(event, &mut self.out);
    }
}

/// Plays a script of captured events on a few connections (opens, reads and writes cut
/// anywhere, capture gaps, closes, the clock), as a hostile peer and a lossy capture could
/// produce them. Each step is `[op, arg, len]` then `len` payload bytes. `on_open` runs after
/// each open (e.g. to send a protocol's preface).
pub fn play(feed: &mut Feed, input: &[u8], on_open: impl Fn(&mut Feed, ConnKey, Role, u64)) {
    let mut ts = 10u64;
    let mut rest = input;
    while let &[op, arg, len, ref tail @ ..] = rest {
        let take = usize::from(len).min(tail.len());
        let (payload, next) = tail.split_at(take);
        rest = next;
        ts += u64::from(arg) * 1_000_000;
        let key = conn(i32::from(op >> 5));
        // Sometimes the kernel copied only a prefix of a longer call.
        let cut = if arg & 0x80 != 0 {
            u64::from(arg) * 97
        } else {
            0
        };
        let len = payload.len() as u64 + cut;
        match op & 0x7 {
            0 => {
                let role = if arg & 1 == 0 {
                    Role::Server
                } else {
                    Role::Client
                };
                feed.open(key, role);
                on_open(feed, key, role, ts);
            }
            1 => feed.data(key, Direction::Recv, ts, payload, len),
            2 => feed.data(key, Direction::Send, ts, payload, len),
            3 => feed.close(key, ts),
            4 => {
                let Feed { streams, out, .. } = feed;
                streams.expire(ts + u64::from(arg) * 1_000_000_000, out);
            }
            _ => feed.data(key, Direction::Recv, ts, payload, payload.len() as u64),
        }
        assert!(
            feed.streams.connections() <= 4,
            "the connection bound holds"
        );
        feed.out.clear();
    }
    let Feed { streams, out, .. } = feed;
    streams.expire(u64::MAX / 2, out);
}
