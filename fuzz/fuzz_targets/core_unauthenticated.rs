#![no_main]
//! See `turnpike::fuzzing::core_unauthenticated`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| turnpike::fuzzing::core_unauthenticated(data));
