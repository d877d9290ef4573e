//! The streams stage and the HTTP decoder under it: the input is a script of captured events
//! ([`tracer_fuzz::play`]) as a hostile peer and a lossy capture could produce them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_fuzz::{Feed, play};

fuzz_target!(|input: &[u8]| {
    play(&mut Feed::new("shop-api"), input, |_, _, _, _| {});
});
