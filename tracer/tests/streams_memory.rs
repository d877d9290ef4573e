//! The agent's memory under a slow-message attack: 10 000 connections each send a large head
//! and a large body, a KiB at a time, all interleaved. Without a global bound the streams
//! stage would hold about half a GiB (each connection's head and body prefix); with
//! `[streams] max_total_bytes` it holds at most the budget, the process's peak RSS stays
//! within the budget plus a fixed overhead, and what was dropped is counted.

use std::sync::Arc;

use bytes::Bytes;
use tracer::capture::event::{ConnClose, ConnOpen, DataChunk};
use tracer::capture::{CaptureEvent, ConnKey, Direction, Role};
use tracer::protocol::Record;
use tracer::streams::{Streams, StreamsConfig};

const CONNECTIONS: i32 = 10_000;
const BUDGET: usize = 16 << 20;
/// The connections' own state (10 000 × well under a KiB), the map, the allocator's slack
/// and what the test itself holds.
const FIXED_OVERHEAD: usize = 24 << 20;
const PIECE: usize = 1024;
const HEAD_PIECES: usize = 12;
const BODY_PIECES: usize = 24;

fn key(i: i32) -> ConnKey {
    ConnKey {
        pid: 7,
        fd: i,
        conn_id: i as u64,
    }
}

/// Resident and peak resident bytes of this process.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs is mounted");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map(|kib| kib * 1024)
            .expect("the field is there")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Connection `i`'s head: a start line, the framing, and a padding header that makes it
/// about `HEAD_PIECES` KiB (within `max_header_bytes`). The body it announces fits
/// `max_body_bytes`, so that its prefix is kept as it comes, and is never sent whole.
fn head(i: i32) -> Vec<u8> {
    let start = format!(
        "POST /upload/{i} HTTP/1.1\r\nhost: shop\r\ncontent-length: {}\r\nx-pad: ",
        (BODY_PIECES + 8) * PIECE
    );
    let pad = HEAD_PIECES * PIECE - start.len() - 4;
    let mut head = start.into_bytes();
    head.resize(head.len() + pad, b'p');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[test]
fn ten_thousand_slow_huge_messages_stay_within_the_byte_budget() {
    let config = StreamsConfig {
        max_total_bytes: BUDGET,
        ..StreamsConfig::default()
    };
    config.validate().unwrap();
    let (baseline, _) = rss();
    let mut streams = Streams::new(config);
    let service: Arc<str> = Arc::from("uploads");
    let mut out = Vec::new();
    for i in 0..CONNECTIONS {
        let open = CaptureEvent::Open(ConnOpen {
            conn: key(i),
            service: service.clone(),
            role: Role::Server,
            local: None,
            peer: None,
            ts_ns: 1,
        });
        streams.on_event(open, &mut out);
    }
    let body = vec![b'{'; PIECE];
    let mut sent = 0u64;
    let mut most_held = 0;
    for round in 0..HEAD_PIECES + BODY_PIECES {
        for i in 0..CONNECTIONS {
            // Made as it is sent: the test holds no connection's message itself.
            let head = (round < HEAD_PIECES).then(|| head(i));
            let piece = match &head {
                Some(head) => head.chunks(PIECE).nth(round).unwrap_or_default(),
                None => &body,
            };
            sent += piece.len() as u64;
            let chunk = CaptureEvent::Data(DataChunk {
                conn: key(i),
                service: service.clone(),
                tid: 1,
                direction: Direction::Recv,
                ts_ns: 10 + round as u64,
                len: piece.len() as u64,
                payload: Bytes::copy_from_slice(piece),
                tls: false,
            });
            streams.on_event(chunk, &mut out);
            most_held = most_held.max(streams.held_bytes());
        }
    }
    let (_, peak) = rss();
    let counters = streams.counters().clone();
    let unbounded = CONNECTIONS as u64 * (HEAD_PIECES + BODY_PIECES) as u64 * PIECE as u64;
    eprintln!(
        "{CONNECTIONS} connections sent {} MiB; held at most {:.1} MiB (budget {} MiB); peak \
         RSS {:.1} MiB over a baseline of {:.1} MiB; shed {} times, {:.1} MiB, {} requests",
        sent >> 20,
        most_held as f64 / f64::from(1 << 20),
        BUDGET >> 20,
        (peak - baseline) as f64 / f64::from(1 << 20),
        baseline as f64 / f64::from(1 << 20),
        counters.connections_shed,
        counters.shed_bytes as f64 / f64::from(1 << 20),
        counters.shed_requests,
    );
    assert_eq!(sent, unbounded);
    assert!(most_held <= BUDGET, "held {most_held} over the budget");
    assert!(
        peak - baseline <= BUDGET + FIXED_OVERHEAD,
        "peak RSS {peak} over baseline {baseline} + budget + overhead"
    );
    assert!(counters.shed_bytes > BUDGET as u64);
    assert!(counters.shed_requests > 0 && counters.shed_requests <= CONNECTIONS as u64);
    for i in 0..CONNECTIONS {
        let close = CaptureEvent::Close(ConnClose {
            conn: key(i),
            service: service.clone(),
            ts_ns: 100,
        });
        streams.on_event(close, &mut out);
    }
    assert_eq!(streams.held_bytes(), 0, "every held byte is given back");
    // Every request is either reported (a reset, at the close) or counted as shed, whether
    // its head had been read whole or in part.
    let reported = out.iter().filter(|r| matches!(r, Record::Http(_))).count() as u64;
    assert_eq!(reported + counters.shed_requests, CONNECTIONS as u64);
}
