//! Whole conversations: every shape of message, split and batched every way.

use super::*;
use crate::capture::{Direction, Role};
use crate::http::fixtures::{self, Write};
use crate::http::{Kind, Outcome};
use crate::streams::StreamsConfig;

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
            c.http.pairing.exchanges,
            c.http.resyncs,
            c.http.parse_errors,
            c.http.pairing.unpaired_responses
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
        (
            c.http.upgraded_connections,
            c.http.parse_errors,
            c.http.resyncs
        ),
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
    assert_eq!(run.streams.counters().http.pairing.pending_overflow, 3);
}
