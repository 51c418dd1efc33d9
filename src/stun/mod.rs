//! STUN wire format (RFC 8489, RFC 8656): parse in place, write into caller-owned buffers,
//! MESSAGE-INTEGRITY, FINGERPRINT and ChannelData framing.

pub mod attr;
pub mod channel;
mod integrity;
mod message;
mod writer;

#[cfg(test)]
mod test_vectors;

pub use channel::{ChannelData, Frame, frame_len, write_channel_data_header};
pub use integrity::{hmac_sha1, long_term_key};
pub use message::{Attributes, Message, RawAttribute, message_len};
pub use writer::MessageWriter;

/// The fixed value in bytes 4..8 of every STUN message header.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN message header.
pub const HEADER_LEN: usize = 20;

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
    #[error("MESSAGE-INTEGRITY is missing or does not match")]
    BadIntegrity,
    #[error("output buffer too small, or message would exceed the STUN size limit")]
    BufferTooSmall,
    #[error("channel number outside 0x4000..=0x7FFF")]
    BadChannelNumber,
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
