//! The stage fed with capture events as the capture stage makes them: testbed conversations
//! split everywhere, truncated at a cap, cut, entered mid-way, and garbage.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::capture::event::{ConnClose, ConnOpen, DataChunk};
use crate::capture::{CaptureEvent, ConnKey, Direction, Role};
use crate::http::fixtures::{self, Write};
use crate::http::{Exchange, Kind, Outcome};

const STEP_NS: u64 = 10;

fn key(fd: i32) -> ConnKey {
    ConnKey {
        pid: 42,
        fd,
        conn_id: fd as u64,
    }
}

fn open(conn: ConnKey, role: Role, ts_ns: u64) -> CaptureEvent {
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
fn data(
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
    })
}

fn close(conn: ConnKey, ts_ns: u64) -> CaptureEvent {
    CaptureEvent::Close(ConnClose {
        conn,
        service: Arc::from("shop-api"),
        ts_ns,
    })
}

/// The way a write of `kind` goes, seen from a process in `role`.
fn direction(role: Role, kind: Kind) -> Direction {
    match (role, kind) {
        (Role::Server, Kind::Request) | (Role::Client, Kind::Response) => Direction::Recv,
        _ => Direction::Send,
    }
}

/// What an exchange says, in comparable form.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    role: Role,
    method: String,
    target: String,
    request_body: Vec<u8>,
    request_len: u64,
    request_truncated: bool,
    status: Option<u16>,
    response_body: Vec<u8>,
    response_len: u64,
    outcome: Outcome,
    start_ns: u64,
    end_ns: u64,
}

fn seen(e: &Exchange) -> Seen {
    Seen {
        role: e.role,
        method: e.request.head.method.clone(),
        target: e.request.head.target.clone(),
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

struct Run {
    streams: Streams,
    out: Vec<Exchange>,
}

impl Run {
    fn new(config: StreamsConfig) -> Self {
        Run {
            streams: Streams::new(config),
            out: Vec::new(),
        }
    }

    fn feed(&mut self, ev: CaptureEvent) {
        self.streams.on_event(ev, &mut self.out);
    }

    fn seen(&self) -> Vec<Seen> {
        self.out.iter().map(seen).collect()
    }
}

/// Feeds `writes` on one connection opened in `role`, write `i` stamped `STEP_NS * (i + 1)`;
/// write `cut.0` split at byte `cut.1` into two events with the same stamp. Then closes.
fn replay(role: Role, writes: &[Write], cut: Option<(usize, usize)>) -> Run {
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

#[test]
fn keep_alive_conversation_gives_every_exchange() {
    let writes = fixtures::keep_alive_conversation(2048);
    let run = replay(Role::Server, &writes, None);
    let got = run.seen();
    let summary: Vec<(&str, &str, Option<u16>)> = got
        .iter()
        .map(|s| (s.method.as_str(), s.target.as_str(), s.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("POST", "/api/v1/orders", Some(201)),
            ("PUT", "/api/v1/orders/SO-000123/model", Some(200)),
            ("GET", "/crm/v1/deals/SO-000123", Some(200)),
            ("GET", "/api/v1/orders/SO-000123", Some(200)),
            ("GET", "/api/v1/orders/SO-404", Some(404)),
            ("HEAD", "/api/v1/orders/SO-000123", Some(200)),
            (
                "POST",
                "/mes/api/work-orders/SO-000123/transitions",
                Some(204)
            ),
            ("GET", "/api/v1/orders/SO-000123", Some(304)),
            ("PUT", "/api/v1/orders/SO-000123/model", Some(200)),
        ]
    );
    assert!(
        got.iter()
            .all(|s| s.outcome == Outcome::Complete && s.role == Role::Server)
    );
    assert_eq!(got[0].response_body, fixtures::CREATED.as_bytes());
    assert_eq!((got[0].start_ns, got[0].end_ns), (10, 20));
    assert_eq!(got[1].request_body, fixtures::model(2048));
    assert!(!got[1].request_truncated);
    assert_eq!(
        got[2].response_body,
        br#"{"deal":{"order":{"id":"SO-000123","status":"MANUFACTURING_APPROVED"}}}"#
    );
    assert_eq!(got[5].response_len, 0);
    // 100-continue: the exchange spans the head, the interim answer, the body and the answer.
    assert_eq!(
        (got[8].request_len, got[8].start_ns, got[8].end_ns),
        (300, 150, 180)
    );
    let c = run.streams.counters();
    assert_eq!(
        (
            c.pairing.exchanges,
            c.resyncs,
            c.parse_errors,
            c.pairing.unpaired_responses
        ),
        (9, 0, 0, 0)
    );
    assert_eq!(run.streams.connections(), 0);
}

#[test]
fn every_write_split_at_every_byte_gives_the_same_exchanges() {
    let conversations = [
        fixtures::keep_alive_conversation(600),
        fixtures::http10_conversation(),
    ];
    for role in [Role::Server, Role::Client] {
        for writes in &conversations {
            let reference = replay(role, writes, None).seen();
            assert!(!reference.is_empty());
            for (w, (_, bytes)) in writes.iter().enumerate() {
                for at in 1..bytes.len() {
                    let got = replay(role, writes, Some((w, at))).seen();
                    assert_eq!(got, reference, "{role:?}: write {w} split at {at}");
                }
            }
        }
    }
}

#[test]
fn http10_body_ends_at_close() {
    let run = replay(Role::Client, &fixtures::http10_conversation(), None);
    let got = run.seen();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].outcome, Outcome::Complete);
    assert_eq!(got[0].role, Role::Client);
    assert_eq!(got[0].response_body, fixtures::CREATED.as_bytes());
    assert_eq!(got[0].end_ns, 30);
}

#[test]
fn many_messages_in_one_read() {
    // Every request in one read and every response in one read: pipelining at its limit.
    let writes: Vec<Write> = fixtures::keep_alive_conversation(1000)
        .into_iter()
        .take(14)
        .collect();
    let join = |kind: Kind| -> Vec<u8> {
        writes
            .iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, b)| b.clone())
            .collect()
    };
    let batched = [
        (Kind::Request, join(Kind::Request)),
        (Kind::Response, join(Kind::Response)),
    ];
    let got = replay(Role::Server, &batched, None).seen();
    let one_by_one = replay(Role::Server, &writes, None).seen();
    assert_eq!(got.len(), 8);
    let strip = |s: &Seen| Seen {
        start_ns: 0,
        end_ns: 0,
        ..s.clone()
    };
    assert_eq!(
        got.iter().map(strip).collect::<Vec<_>>(),
        one_by_one.iter().map(strip).collect::<Vec<_>>()
    );
}

/// Feeds writes whose captures are cut at `cap` bytes, as the kernel side delivers them.
fn replay_capped(role: Role, writes: &[Write], cap: usize, mut run: Run) -> Run {
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

#[test]
fn gap_in_a_body_of_known_length_keeps_the_next_message() {
    let big = 300 * 1024;
    let writes = [
        fixtures::upload("SO-1", big),
        fixtures::json_response("200 OK", r#"{"status":"FILE_UPLOADED"}"#),
        fixtures::json_request("POST", "/api/v1/orders/SO-1/submit", "{}"),
        fixtures::json_response("200 OK", r#"{"status":"SUBMITTED"}"#),
    ];
    for role in [Role::Server, Role::Client] {
        let run = replay_capped(role, &writes, 16 * 1024, Run::new(StreamsConfig::default()));
        let got = run.seen();
        assert_eq!(got.len(), 2, "{role:?}");
        assert_eq!(got[0].request_len, big as u64);
        assert!(got[0].request_truncated);
        let head_len = writes[0].1.len() - big;
        assert_eq!(got[0].request_body, fixtures::model(16 * 1024 - head_len));
        assert_eq!(got[0].status, Some(200));
        assert_eq!(got[1].target, "/api/v1/orders/SO-1/submit");
        let c = run.streams.counters();
        assert_eq!((c.gaps, c.resyncs), (1, 0));
        assert_eq!(c.gap_bytes, (writes[0].1.len() - 16 * 1024) as u64);
    }
}

#[test]
fn gap_in_a_head_resyncs_on_the_next_message() {
    let writes = [
        fixtures::json_request("POST", "/api/v1/orders", r#"{"cart_id":"K-1"}"#),
        fixtures::json_response("201 Created", fixtures::CREATED),
        fixtures::json_request("POST", "/api/v1/orders/SO-000123/submit", "{}"),
        fixtures::json_response("200 OK", r#"{"status":"SUBMITTED"}"#),
    ];
    // Only the first write is cut inside its head.
    let conn = key(6);
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(conn, Role::Server, 0));
    for (i, (kind, bytes)) in writes.iter().enumerate() {
        let captured = if i == 0 { &bytes[..20] } else { &bytes[..] };
        let d = direction(Role::Server, *kind);
        run.feed(data(
            conn,
            d,
            STEP_NS * (i as u64 + 1),
            captured,
            bytes.len(),
        ));
    }
    let got = run.seen();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].target.as_str(), got[0].status),
        ("/api/v1/orders/SO-000123/submit", Some(200))
    );
    let c = run.streams.counters();
    assert_eq!((c.resyncs, c.pairing.unpaired_responses), (1, 1));
}

#[test]
fn chunked_body_losing_its_framing_still_reports_the_response() {
    let json = format!(r#"{{"deal":"{}"}}"#, "x".repeat(3000));
    let writes = [
        fixtures::json_request("GET", "/crm/v1/deals/SO-1", ""),
        fixtures::chunked_response(&json),
        fixtures::json_request("GET", "/crm/v1/deals/SO-2", ""),
        fixtures::json_response("200 OK", "{}"),
    ];
    // The cap falls in the first chunk; the gap runs over the chunk boundary and the end.
    let run = replay_capped(
        Role::Server,
        &writes,
        1024,
        Run::new(StreamsConfig::default()),
    );
    let got = run.seen();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].status, Some(200));
    assert_eq!(got[0].outcome, Outcome::Complete);
    assert_eq!(got[1].target, "/crm/v1/deals/SO-2");
    assert_eq!(run.streams.counters().resyncs, 1);
}

#[test]
fn close_mid_response_is_a_reset() {
    let writes = [
        fixtures::json_request(
            "POST",
            "/mes/api/pricing-requests",
            r#"{"orderRef":"SO-1"}"#,
        ),
        fixtures::json_response("200 OK", r#"{"orderRef":"SO-1","state":"PRICED"}"#),
    ];
    let conn = key(7);
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(conn, Role::Client, 0));
    run.feed(data(
        conn,
        Direction::Send,
        10,
        &writes[0].1,
        writes[0].1.len(),
    ));
    let partial = &writes[1].1[..writes[1].1.len() - 5];
    run.feed(data(conn, Direction::Recv, 20, partial, partial.len()));
    run.feed(close(conn, 30));
    let got = run.seen();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].outcome, got[0].status, got[0].end_ns),
        (Outcome::Reset, Some(200), 30)
    );

    // No response at all (the pricing_no_answer fault): the client gives up and closes.
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(conn, Role::Client, 0));
    run.feed(data(
        conn,
        Direction::Send,
        10,
        &writes[0].1,
        writes[0].1.len(),
    ));
    run.feed(close(conn, 40));
    let got = run.seen();
    assert_eq!((got[0].outcome, got[0].status), (Outcome::Reset, None));
    assert_eq!(run.streams.counters().pairing.resets, 1);
}

#[test]
fn unanswered_request_times_out() {
    let request = fixtures::json_request("POST", "/mes/api/pricing-requests", "{}");
    let conn = key(8);
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(conn, Role::Client, 0));
    run.feed(data(
        conn,
        Direction::Send,
        1_000,
        &request.1,
        request.1.len(),
    ));
    let mut out = Vec::new();
    run.streams.expire(1_000 + 29_999_999_999, &mut out);
    assert!(out.is_empty());
    run.streams.expire(1_000 + 30_000_000_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::Timeout);
    assert_eq!(out[0].end_ns, 1_000 + 30_000_000_000);
    assert_eq!(run.streams.counters().pairing.timeouts, 1);
    // Idle connections are forgotten, not reported again.
    run.streams.expire(1_000 + 600_000_000_000, &mut out);
    assert_eq!((out.len(), run.streams.connections()), (1, 0));
    assert_eq!(run.streams.counters().connections_expired, 1);
}

#[test]
fn connection_entered_midway_resyncs_and_learns_its_role() {
    let writes = fixtures::keep_alive_conversation(4000);
    // No Open: the agent started while the upload (write 2) was on the wire.
    let conn = key(9);
    let mut run = Run::new(StreamsConfig::default());
    let upload = &writes[2].1;
    run.feed(data(
        conn,
        Direction::Recv,
        5,
        &upload[upload.len() - 1500..],
        1500,
    ));
    for (i, (kind, bytes)) in writes.iter().enumerate().skip(3) {
        let d = direction(Role::Server, *kind);
        run.feed(data(conn, d, STEP_NS * (i as u64 + 1), bytes, bytes.len()));
    }
    let got = run.seen();
    // The upload's own response answers no request seen: the first exchange is the lookup.
    assert_eq!(got.len(), 7);
    assert_eq!(got[0].target, "/crm/v1/deals/SO-000123");
    assert!(got.iter().all(|s| s.role == Role::Server));
    assert_eq!(run.streams.counters().pairing.unpaired_responses, 1);

    // An Open without a role resyncs the same way; here the client side of it.
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(conn, Role::Unknown, 0));
    for (i, (kind, bytes)) in writes.iter().enumerate() {
        let d = direction(Role::Client, *kind);
        run.feed(data(conn, d, STEP_NS * (i as u64 + 1), bytes, bytes.len()));
    }
    let got = run.seen();
    assert_eq!(got.len(), 9);
    assert!(got.iter().all(|s| s.role == Role::Client));
}

#[test]
fn connection_found_open_mid_upload_resyncs() {
    // The capture announces sockets already open when the agent starts, with their role,
    // but their bytes start wherever the conversation was.
    let writes = fixtures::keep_alive_conversation(4000);
    let conn = key(10);
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(conn, Role::Server, 0));
    let upload = &writes[2].1;
    run.feed(data(
        conn,
        Direction::Recv,
        5,
        &upload[upload.len() - 1500..],
        1500,
    ));
    for (i, (kind, bytes)) in writes.iter().enumerate().skip(3) {
        let d = direction(Role::Server, *kind);
        run.feed(data(conn, d, STEP_NS * (i as u64 + 1), bytes, bytes.len()));
    }
    assert_eq!(run.seen().len(), 7);
    let c = run.streams.counters();
    assert_eq!((c.non_http_connections, c.parse_errors), (0, 0));
}

#[test]
fn tls_and_garbage_are_counted_as_non_http() {
    let client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut run = Run::new(StreamsConfig::default());
    for (fd, role, bytes) in [
        (1, Role::Client, client_hello),
        (2, Role::Unknown, client_hello),
        (3, Role::Server, &garbage[..]),
        (4, Role::Server, b"\0\0\0\x08\x04\xd2\x16\x2f".as_slice()),
        (
            5,
            Role::Client,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
        ),
    ] {
        run.feed(open(key(fd), role, 0));
        // A few turns of conversation: HTTP would have shown a message start by now.
        for ts in 0..4 {
            run.feed(data(key(fd), Direction::Send, ts, bytes, bytes.len()));
            run.feed(data(key(fd), Direction::Recv, ts, bytes, bytes.len()));
        }
    }
    assert!(run.out.is_empty());
    assert_eq!(run.streams.counters().non_http_connections, 5);
    assert_eq!(run.streams.buffered_bytes(), 0);
}

#[test]
fn oversized_head_is_dropped_and_the_next_message_parsed() {
    let config = StreamsConfig {
        max_headers: 8,
        ..StreamsConfig::default()
    };
    let many: String = (0..20).map(|i| format!("x-h{i}: v\r\n")).collect();
    let crowded = format!("GET /a HTTP/1.1\r\n{many}\r\n").into_bytes();
    let huge = format!("GET /b HTTP/1.1\r\nx-big: {}\r\n\r\n", "v".repeat(20_000)).into_bytes();
    let writes = [
        (Kind::Request, crowded),
        (Kind::Request, huge),
        fixtures::json_request("GET", "/c", ""),
        fixtures::json_response("200 OK", "{}"),
    ];
    let run = replay_capped(Role::Server, &writes, usize::MAX, Run::new(config));
    let got = run.seen();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, "/c");
    assert_eq!(run.streams.counters().oversized_heads, 2);
}

#[test]
fn least_recently_active_connection_is_evicted() {
    let config = StreamsConfig {
        max_connections: 2,
        ..StreamsConfig::default()
    };
    let mut run = Run::new(config);
    let request = fixtures::json_request("GET", "/a", "");
    run.feed(open(key(1), Role::Server, 0));
    run.feed(open(key(2), Role::Server, 1));
    run.feed(data(
        key(1),
        Direction::Recv,
        2,
        &request.1,
        request.1.len(),
    ));
    run.feed(open(key(3), Role::Server, 3));
    assert_eq!(run.streams.connections(), 2);
    assert_eq!(run.streams.counters().connections_evicted, 1);
    // Connection 1 was used last, so 2 went; 1 still pairs its response.
    let response = fixtures::json_response("200 OK", "{}");
    run.feed(data(
        key(1),
        Direction::Send,
        4,
        &response.1,
        response.1.len(),
    ));
    assert_eq!(run.out.len(), 1);
}

#[test]
fn upgrade_ends_http_on_the_connection() {
    let writes = [
        (
            Kind::Request,
            b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".to_vec(),
        ),
        (
            Kind::Response,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x05hello".to_vec(),
        ),
        (Kind::Request, b"\x81\x85\x00\x00\x00\x00hello".to_vec()),
    ];
    let run = replay(Role::Server, &writes, None);
    assert_eq!(run.seen().len(), 1);
    let c = run.streams.counters();
    assert_eq!(
        (c.upgraded_connections, c.parse_errors, c.resyncs),
        (1, 0, 0)
    );
}

#[test]
fn early_response_to_an_upload_pairs_with_it() {
    let upload = fixtures::upload("SO-1", 8000);
    let writes = [
        (Kind::Request, upload.1[..3000].to_vec()),
        fixtures::json_response("507 Insufficient Storage", r#"{"error":"storage full"}"#),
        (Kind::Request, upload.1[3000..].to_vec()),
        fixtures::json_request("GET", "/api/v1/orders/SO-1", ""),
        fixtures::json_response("200 OK", "{}"),
    ];
    let got = replay(Role::Server, &writes, None).seen();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].status, got[0].request_truncated), (Some(507), true));
    assert_eq!(got[0].request_len, 8000);
    assert_eq!(got[1].target, "/api/v1/orders/SO-1");
}

#[test]
fn pending_requests_are_bounded() {
    let config = StreamsConfig {
        max_pending_requests: 2,
        ..StreamsConfig::default()
    };
    let request = fixtures::json_request("GET", "/a", "");
    let mut run = Run::new(config);
    run.feed(open(key(1), Role::Server, 0));
    for ts in 1..=5 {
        run.feed(data(
            key(1),
            Direction::Recv,
            ts,
            &request.1,
            request.1.len(),
        ));
    }
    run.feed(close(key(1), 9));
    assert_eq!(run.out.len(), 2);
    assert_eq!(run.streams.counters().pairing.pending_overflow, 3);
}

mod property {
    use proptest::prelude::*;

    use super::*;

    fn small_config() -> StreamsConfig {
        StreamsConfig {
            max_connections: 4,
            max_buffered_bytes: 512,
            max_header_bytes: 256,
            max_headers: 8,
            max_body_bytes: 64,
            max_pending_requests: 4,
            ..StreamsConfig::default()
        }
    }

    /// Bytes that are sometimes HTTP: pieces of real messages mixed with noise.
    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let pieces: Vec<Vec<u8>> = fixtures::keep_alive_conversation(100)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop::sample::select(pieces),
                prop::sample::select(vec![
                    b"HTTP/1.1 200 OK\r\n".to_vec(),
                    b"GET / HTTP/1.1\r\n".to_vec(),
                    b"\r\n\r\n".to_vec(),
                    b"transfer-encoding: chunked\r\n".to_vec(),
                    b"content-length: 99999999\r\n".to_vec(),
                    b"ffffffff\r\n".to_vec(),
                ]),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_any_splits_never_panic_and_stay_bounded(
            streams in prop::collection::vec(
                (0..6i32, any::<bool>(), stream_bytes(), prop::collection::vec(1..200usize, 1..8), 0..3u8),
                1..10,
            ),
            roles in prop::collection::vec(0..4u8, 6),
        ) {
            let config = small_config();
            let mut s = Streams::new(config.clone());
            let mut out = Vec::new();
            let mut ts = 0;
            for fd in 0..6 {
                let role = match roles[fd as usize] {
                    0 => Role::Server,
                    1 => Role::Client,
                    2 => Role::Unknown,
                    _ => continue, // no Open: seen mid-way
                };
                s.on_event(open(key(fd), role, 0), &mut out);
            }
            for (fd, send, bytes, cuts, gap_every) in streams {
                let d = if send { Direction::Send } else { Direction::Recv };
                let mut rest = &bytes[..];
                for (i, cut) in cuts.iter().cycle().enumerate() {
                    if rest.is_empty() {
                        break;
                    }
                    let (part, tail) = rest.split_at((*cut).min(rest.len()));
                    rest = tail;
                    ts += 1;
                    // Some chunks lose their tail to the cap.
                    let captured = if gap_every > 0 && i % gap_every as usize == 0 {
                        &part[..part.len() / 2]
                    } else {
                        part
                    };
                    s.on_event(data(key(fd), d, ts, captured, part.len()), &mut out);
                    for conn in s.conns.values() {
                        prop_assert!(conn.max_dir_buffered() <= config.max_buffered_bytes);
                    }
                    prop_assert!(s.connections() <= config.max_connections);
                }
                if ts % 5 == 0 {
                    s.on_event(close(key(fd), ts), &mut out);
                }
            }
            s.expire(u64::MAX, &mut out);
            for e in &out {
                prop_assert!(e.request.body.len() <= config.max_body_bytes);
                prop_assert!(e.response.as_ref().is_none_or(|r| r.body.len() <= config.max_body_bytes));
                prop_assert!(e.end_ns >= e.start_ns);
            }
        }
    }
}
