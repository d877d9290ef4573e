//! Random bytes and random splits: no panic, bounded memory; random splits of real traffic:
//! the same exchanges.

use proptest::prelude::*;

use super::*;
use crate::capture::{Direction, Role};
use crate::http::fixtures;
use crate::streams::{Streams, StreamsConfig};

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
        for e in http(&out) {
            prop_assert!(e.request.body.len() <= config.max_body_bytes);
            prop_assert!(e.response.as_ref().is_none_or(|r| r.body.len() <= config.max_body_bytes));
            prop_assert!(e.end_ns >= e.start_ns);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any number of cuts in every write gives what whole writes give.
    #[test]
    fn any_splits_of_a_conversation_give_the_same_exchanges(
        cuts in prop::collection::vec(prop::collection::vec(1..400usize, 0..4), 18),
        client in any::<bool>(),
    ) {
        let role = if client { Role::Client } else { Role::Server };
        let writes = fixtures::keep_alive_conversation(900);
        let reference = replay(role, &writes, None).seen();
        let conn = key(3);
        let mut run = Run::new(StreamsConfig::default());
        run.feed(open(conn, role, 0));
        for (i, (kind, bytes)) in writes.iter().enumerate() {
            let mut rest = &bytes[..];
            for cut in cuts[i % cuts.len()].iter().chain([&usize::MAX]) {
                let (part, tail) = rest.split_at((*cut).min(rest.len()));
                rest = tail;
                let ts = STEP_NS * (i as u64 + 1);
                run.feed(data(conn, direction(role, *kind), ts, part, part.len()));
            }
        }
        run.feed(close(conn, STEP_NS * (writes.len() as u64 + 1)));
        prop_assert_eq!(run.seen(), reference);
    }
}
