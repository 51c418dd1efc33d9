//! STUN wire format (RFC 8489, RFC 8656): parse in place, write into caller-owned buffers,
//! MESSAGE-INTEGRITY, FINGERPRINT and ChannelData framing.
//!
//! Hand-written rather than a crate: the packet path needs parsing in place with no heap
//! allocation and a cap on the work per message (the hardening issue's quadratic parse), which
//! `benches/codec.rs` and `tests/hostile.rs` measure; `tests/stun_differential.rs` checks it
//! against the `stun-types` crate.

pub mod attr;
pub mod channel;
mod integrity;
mod message;
mod writer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_vectors;

pub use channel::{ChannelData, Frame, frame_len, write_channel_data_header};
pub use integrity::{hmac_sha1, hmac_sha256, long_term_key, long_term_key_sha256, userhash};
pub use message::{Attributes, Message, RawAttribute, message_class, message_len};
pub use writer::MessageWriter;

/// The fixed value in bytes 4..8 of every STUN message header.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN message header.
pub const HEADER_LEN: usize = 20;

/// The most attributes a message may carry; [`Message::parse`] refuses more with
/// [`StunError::TooManyAttributes`], and [`MessageWriter`] never writes more.
///
/// No RFC caps the number of attributes, so a receiver may refuse what it cannot afford. A
/// legitimate message carries each type it needs once (an Allocate with every option has
/// about 15); only XOR-PEER-ADDRESS is meant to repeat, in a CreatePermission (RFC 8656
/// §10.1), and 128 leaves room for over 100 peers in one request, above the default
/// `permissions-per-allocation` of 64 (more new peers than that get 508 anyway). Reading at
/// most 128 attribute headers bounds the work any message can cause, whatever its size: a
/// 64 KB datagram could otherwise hold 16,379 empty attributes.
pub const MAX_ATTRIBUTES: usize = 128;

/// The most types [`Message::unknown_required`] reports: a 420 answer lists at most this many
/// in UNKNOWN-ATTRIBUTES (RFC 8489 §14.9 sets no number; a client needs only some to know
/// what it got wrong, and the answer stays small).
pub const MAX_UNKNOWN_REPORTED: usize = 16;

/// Why a buffer could not be parsed or a message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("buffer is shorter than the header it should contain")]
    TooShort,
    #[error("not a STUN message (top two bits set or bad magic cookie)")]
    NotStun,
    #[error("message length field is not a multiple of 4 or does not match the buffer")]
    BadLength,
    #[error("attribute length runs past the end of the message or is wrong for its type")]
    BadAttributeLength,
    #[error("attribute value is malformed")]
    BadAttributeValue,
    #[error("FINGERPRINT does not match or is not the last attribute")]
    BadFingerprint,
    #[error("MESSAGE-INTEGRITY (or -SHA256) is missing or does not match")]
    BadIntegrity,
    #[error("output buffer too small, or message would exceed the STUN size limit")]
    BufferTooSmall,
    #[error("channel number outside 0x4000..=0x7FFF")]
    BadChannelNumber,
    #[error("message carries more than MAX_ATTRIBUTES (128) attributes")]
    TooManyAttributes,
}

/// A STUN method (12 bits on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    /// RFC 6062 §6.1: a TCP connection to a peer, from a TCP allocation's relayed address.
    pub const CONNECT: Method = Method(0x00A);
    /// RFC 6062 §6.1: binds a new client connection to a peer connection.
    pub const CONNECTION_BIND: Method = Method(0x00B);
    /// RFC 6062 §6.1: a peer connected to a TCP allocation's relayed address.
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);
}

/// The class of a STUN message (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// The 96-bit transaction ID of a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

/// Reads a big-endian u16 at `at`, or `None` if it does not fit in `buf`.
fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    buf.get(at..)?.first_chunk().map(|b| u16::from_be_bytes(*b))
}

/// Reads a big-endian u32 at `at`, or `None` if it does not fit in `buf`.
fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..)?.first_chunk().map(|b| u32::from_be_bytes(*b))
}

/// Rounds an attribute value length up to the next multiple of 4.
const fn padded_len(len: usize) -> usize {
    (len + 3) & !3
}

/// Counts attribute headers read, so that tests can assert that the work done on a message is
/// linear in its attribute count (a count, unlike a time, does not flake). Compiled only into
/// the crate's own tests; elsewhere [`visits::record`] is an empty inline function.
pub(crate) mod visits {
    #[cfg(test)]
    thread_local! {
        static VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// One attribute header was read.
    #[inline(always)]
    pub(crate) fn record() {
        #[cfg(test)]
        VISITS.with(|v| v.set(v.get() + 1));
    }

    /// Attribute headers read on this thread since the last call.
    #[cfg(test)]
    pub(crate) fn take() -> u64 {
        VISITS.with(|v| v.replace(0))
    }
}
