#![no_main]
//! See `turnpike::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| turnpike::fuzzing::config(data));
