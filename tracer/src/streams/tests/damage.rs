//! What capture and traffic do to streams: gaps, cuts, timeouts, late starts, garbage, limits.

use super::*;
use crate::capture::{Direction, Role};
use crate::http::fixtures;
use crate::http::{Kind, Outcome};
use crate::streams::StreamsConfig;

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
        assert!(got[0].request_body.is_empty(), "a cut body is not kept");
        assert_eq!(got[0].status, Some(200));
        assert_eq!(got[1].target, "/api/v1/orders/SO-1/submit");
        let c = run.streams.counters();
        assert_eq!((c.gaps, c.http.resyncs), (1, 0));
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
    assert_eq!((c.http.resyncs, c.http.pairing.unpaired_responses), (1, 1));
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
    assert_eq!(run.streams.counters().http.resyncs, 1);
}

#[test]
fn close_mid_response_is_a_reset() {
    let request = fixtures::json_request("POST", "/mes/api/pricing-requests", "{}").1;
    let response = fixtures::json_response("200 OK", r#"{"orderRef":"SO-1"}"#).1;
    // The request, `answered` bytes of the response, then the close.
    let cut = |answered: usize| {
        let conn = key(7);
        let mut run = Run::new(StreamsConfig::default());
        run.feed(open(conn, Role::Client, 0));
        run.feed(data(conn, Direction::Send, 10, &request, request.len()));
        if answered > 0 {
            let partial = &response[..answered];
            run.feed(data(conn, Direction::Recv, 20, partial, partial.len()));
        }
        run.feed(close(conn, 30));
        run
    };
    let got = cut(response.len() - 5).seen();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].outcome, got[0].status, got[0].end_ns),
        (Outcome::Reset, Some(200), 30)
    );
    // No response at all (the pricing_no_answer fault): the client gives up and closes.
    let run = cut(0);
    let got = run.seen();
    assert_eq!((got[0].outcome, got[0].status), (Outcome::Reset, None));
    assert_eq!(run.streams.counters().http.pairing.resets, 1);
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
    let timed_out = http(&out);
    assert_eq!(timed_out[0].outcome, Outcome::Timeout);
    assert_eq!(timed_out[0].end_ns, 1_000 + 30_000_000_000);
    assert_eq!(run.streams.counters().http.pairing.timeouts, 1);
    // Idle connections are forgotten, not reported again.
    run.streams.expire(1_000 + 600_000_000_000, &mut out);
    assert_eq!((out.len(), run.streams.connections()), (1, 0));
    assert_eq!(run.streams.counters().connections_expired, 1);
}

/// Feeds the keep-alive conversation to a connection first seen while its upload (write 2)
/// was on the wire: announced with `open_role`, or not announced at all.
fn entered_mid_upload(open_role: Option<Role>) -> Run {
    let writes = fixtures::keep_alive_conversation(4000);
    let conn = key(9);
    let mut run = Run::new(StreamsConfig::default());
    if let Some(role) = open_role {
        run.feed(open(conn, role, 0));
    }
    let tail = &writes[2].1[writes[2].1.len() - 1500..];
    run.feed(data(conn, Direction::Recv, 5, tail, tail.len()));
    for (i, (kind, bytes)) in writes.iter().enumerate().skip(3) {
        let d = direction(Role::Server, *kind);
        run.feed(data(conn, d, STEP_NS * (i as u64 + 1), bytes, bytes.len()));
    }
    run
}

#[test]
fn connection_entered_midway_resyncs_and_learns_its_role() {
    // Not announced (agent started late), or announced with the role read from /proc: the
    // bytes start wherever the conversation was either way.
    for open_role in [None, Some(Role::Server)] {
        let run = entered_mid_upload(open_role);
        let got = run.seen();
        // The upload's own response answers no request seen: the first exchange is the lookup.
        assert_eq!(got.len(), 7, "{open_role:?}");
        assert_eq!(got[0].target, "/crm/v1/deals/SO-000123");
        assert!(got.iter().all(|s| s.role == Role::Server));
        let c = run.streams.counters();
        assert_eq!(c.http.pairing.unpaired_responses, 1);
        assert_eq!((c.http.non_http_connections, c.http.parse_errors), (0, 0));
    }

    // An Open without a role resyncs the same way; here the client side of it.
    let writes = fixtures::keep_alive_conversation(4000);
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(key(9), Role::Unknown, 0));
    for (i, (kind, bytes)) in writes.iter().enumerate() {
        let d = direction(Role::Client, *kind);
        run.feed(data(
            key(9),
            d,
            STEP_NS * (i as u64 + 1),
            bytes,
            bytes.len(),
        ));
    }
    let got = run.seen();
    assert_eq!(got.len(), 9);
    assert!(got.iter().all(|s| s.role == Role::Client));
}

#[test]
fn tls_is_counted_as_encrypted_and_garbage_as_non_http() {
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
    let counters = &run.streams.counters().http;
    assert_eq!(
        (
            counters.non_http_connections,
            counters.encrypted_connections
        ),
        (3, 2)
    );
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
    assert_eq!(run.streams.counters().http.oversized_heads, 2);
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
