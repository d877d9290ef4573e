//! The streams stage and the HTTP decoder under it: the input is a script of captured events
//! on a few connections (opens, reads and writes cut anywhere, capture gaps, closes, the
//! clock), as a hostile peer and a lossy capture could produce them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::capture::{Direction, Role};
use tracer_fuzz::{Feed, conn};

fuzz_target!(|input: &[u8]| {
    let mut feed = Feed::new("shop-api");
    let mut ts = 10u64;
    let mut rest = input;
    // Each step: [op, arg, len] then `len` payload bytes.
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
            0 => feed.open(
                key,
                if arg & 1 == 0 {
                    Role::Server
                } else {
                    Role::Client
                },
            ),
            1 => feed.data(key, Direction::Recv, ts, payload, len),
            2 => feed.data(key, Direction::Send, ts, payload, len),
            3 => feed.close(key, ts),
            4 => {
                let Feed { streams, out, .. } = &mut feed;
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
    let Feed { streams, out, .. } = &mut feed;
    streams.expire(u64::MAX / 2, out);
});
