//! The bodies of the fuzz targets in `fuzz/`. Not part of turnpike's API: hidden from the docs,
//! no stability promised, here only so that `cargo test` (tests/fuzz_corpus.rs) replays the
//! corpora through exactly the code libFuzzer runs, without a nightly toolchain.
//!
//! Each target takes the fuzzer's bytes, never panics on its own, and panics (with a message
//! saying which invariant broke) when the code under test misbehaves:
//!
//! - [`stun_message`]: STUN parsing, every accessor and attribute decoder, MESSAGE-INTEGRITY,
//!   FINGERPRINT, UNKNOWN-ATTRIBUTES, and a rewrite of the message through `MessageWriter`.
//! - [`stream_framing`]: ChannelData and STUN framing on a TCP/TLS byte stream cut at
//!   fuzzer-chosen points: the frames must be the same whatever the segmentation.
//! - [`config`]: TOML text through `Config::from_toml`: errors are one line and name a key; a
//!   configuration that validates runs the protocol core without panicking.
//! - [`core_unauthenticated`] and [`core_authenticated`]: the sans-IO core, built as the I/O
//!   layer builds it, driven by a sequence of operations (client messages on UDP/TCP/TLS 5-tuples,
//!   peer datagrams, simulated time, relay sockets and cluster leases answered, reloads), with
//!   its invariants checked after every step. The authenticated target signs the fuzzer's
//!   attributes with a valid USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
//!
//! [`core::Op`] is the input format of the core targets, public so that the seed converter
//! (`examples/fuzz_seeds.rs`) can write inputs from real clients' traffic.

mod codec;
mod config_text;
pub mod core;

pub use codec::{stream_framing, stun_message};
pub use config_text::config;
pub use core::{core_authenticated, core_unauthenticated};

/// A fuzz target: takes any bytes, panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory.
pub const TARGETS: [(&str, Target); 5] = [
    ("stun_message", stun_message),
    ("stream_framing", stream_framing),
    ("config", config),
    ("core_unauthenticated", core_unauthenticated),
    ("core_authenticated", core_authenticated),
];

/// Reads the fuzzer's bytes front to back. Running out is not an error: every read past the end
/// gives `None` or fewer bytes, so every input decodes to something.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        let (&bytes, rest) = self.data.split_first_chunk::<2>()?;
        self.data = rest;
        Some(u16::from_be_bytes(bytes))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// A length-prefixed (u16) run of bytes.
    pub fn chunk(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        Some(self.bytes(usize::from(len)))
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Appends `data` with its u16 length in front, as [`Input::chunk`] reads it; `data` beyond
/// 65,535 bytes is cut.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let data = &data[..data.len().min(usize::from(u16::MAX))];
    // Cut to u16::MAX just above.
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_past_the_end_as_nothing() {
        let mut input = Input::new(&[1, 0, 3, 9, 8]);
        assert_eq!(input.u8(), Some(1));
        assert_eq!(input.chunk(), Some(&[9, 8][..]));
        assert!(input.is_empty());
        assert_eq!(input.u16(), None);
        assert_eq!(input.bytes(4), b"");
        let mut out = Vec::new();
        push_chunk(&mut out, b"abc");
        assert_eq!(Input::new(&out).chunk(), Some(&b"abc"[..]));
    }

    #[test]
    fn every_target_takes_empty_and_junk_input() {
        for (name, target) in TARGETS {
            for input in [
                &[][..],
                &[0xff; 7],
                &[0; 64],
                b"\x00\x01\x00\x00\x21\x12\xa4\x42",
            ] {
                let result = std::panic::catch_unwind(|| target(input));
                assert!(result.is_ok(), "{name} panicked on {input:?}");
            }
        }
    }
}
