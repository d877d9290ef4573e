//! The config loader: any text is a config or an error that names the problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input)
        && let Err(err) = tracer::config::Config::parse(text, "fuzz")
    {
        assert!(!err.to_string().is_empty());
    }
});
