//! The streams stage and the AMQP 0-9-1 parser under it: every connection opens with the
//! client's protocol header (`AMQP\0\0\x09\x01`), so streams hands it to AMQP, then the
//! script ([`tracer_fuzz::play`]) writes frames either way, cut, lost and out of time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::capture::{Direction, Role};
use tracer_fuzz::{Feed, play};

const PREFACE: &[u8] = b"AMQP\0\0\x09\x01";

fuzz_target!(|input: &[u8]| {
    play(&mut Feed::new("mes-api"), input, |feed, key, role, ts| {
        // The client writes the header: a traced client sends it, a traced broker reads it.
        let direction = match role {
            Role::Server => Direction::Recv,
            _ => Direction::Send,
        };
        feed.data(key, direction, ts, PREFACE, PREFACE.len() as u64);
    });
});
