#![no_main]
//! See `turnpike::fuzzing::stun_message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| turnpike::fuzzing::stun_message(data));
