#![no_main]
//! See `turnpike::fuzzing::stream_framing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| turnpike::fuzzing::stream_framing(data));
