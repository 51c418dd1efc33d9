//! ChannelData messages (RFC 8656 §12.4) and the framing of STUN and ChannelData on TCP/TLS
//! streams (RFC 8656 §12.5).

use super::{HEADER_LEN, MAGIC_COOKIE, StunError, padded_len, read_u16, read_u32};

/// Size of the ChannelData header: channel number and length.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// Whether `n` is a valid channel number. RFC 8656 narrowed the range to 0x4000..=0x4FFF, but
/// RFC 5766 clients still in wide use (coturn's, libre's) pick numbers up to 0x7FFF, and a server
/// loses nothing by accepting them, so the RFC 5766 range is accepted.
pub fn is_valid_channel_number(n: u16) -> bool {
    (0x4000..=0x7FFF).contains(&n)
}

/// Whether `buf` starts like a ChannelData message (first byte 0x40..=0x7F) rather than STUN.
pub fn is_channel_data(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(0x40..=0x7F))
}

/// A ChannelData message borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub number: u16,
    pub payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message; bytes after the payload (padding) are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<Self, StunError> {
        let (&[n0, n1, l0, l1], rest) = buf
            .split_first_chunk::<CHANNEL_DATA_HEADER_LEN>()
            .ok_or(StunError::TooShort)?;
        let number = u16::from_be_bytes([n0, n1]);
        if !is_valid_channel_number(number) {
            return Err(StunError::BadChannelNumber);
        }
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let payload = rest.get(..len).ok_or(StunError::BadLength)?;
        Ok(ChannelData { number, payload })
    }
}

/// Writes the 4-byte ChannelData header for a payload of `len` bytes at the start of `buf`.
pub fn write_channel_data_header(buf: &mut [u8], number: u16, len: u16) -> Result<(), StunError> {
    if !is_valid_channel_number(number) {
        return Err(StunError::BadChannelNumber);
    }
    let header = buf
        .first_chunk_mut::<CHANNEL_DATA_HEADER_LEN>()
        .ok_or(StunError::BufferTooSmall)?;
    let [n0, n1] = number.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    *header = [n0, n1, l0, l1];
    Ok(())
}

/// The next complete frame on a TCP/TLS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A STUN message of this many bytes (20 + header length).
    Stun(usize),
    /// A ChannelData message: `len` = 4 + payload length, the bytes to hand to
    /// [`ChannelData::parse`]; `padded` = `len` rounded up to a multiple of 4, the bytes it
    /// occupies on the stream.
    ChannelData { len: usize, padded: usize },
}

impl Frame {
    /// How many bytes to consume from the stream for this frame.
    pub fn stream_len(self) -> usize {
        match self {
            Frame::Stun(len) => len,
            Frame::ChannelData { padded, .. } => padded,
        }
    }
}

/// Finds the next frame at the start of the unread stream bytes `buf`.
///
/// `Ok(None)` means more bytes are needed. `Err` means the stream is not STUN or ChannelData
/// (first byte neither 0x00..=0x3F nor 0x40..=0x7F, bad magic cookie, or a STUN length that is
/// not a multiple of 4) and should be closed.
pub fn frame_len(buf: &[u8]) -> Result<Option<Frame>, StunError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first {
        0x00..=0x3F => {
            let Some(len) = read_u16(buf, 2) else {
                return Ok(None);
            };
            if len % 4 != 0 {
                return Err(StunError::BadLength);
            }
            if let Some(cookie) = read_u32(buf, 4) {
                if cookie != MAGIC_COOKIE {
                    return Err(StunError::NotStun);
                }
            }
            let total = HEADER_LEN + usize::from(len);
            Ok((buf.len() >= total).then_some(Frame::Stun(total)))
        }
        0x40..=0x7F => {
            let Some(len) = read_u16(buf, 2) else {
                return Ok(None);
            };
            let len = CHANNEL_DATA_HEADER_LEN + usize::from(len);
            let padded = padded_len(len);
            Ok((buf.len() >= padded).then_some(Frame::ChannelData { len, padded }))
        }
        _ => Err(StunError::NotStun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_channel_data() {
        let buf = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0x00];
        let cd = ChannelData::parse(&buf).unwrap();
        assert_eq!(cd.number, 0x4001);
        assert_eq!(cd.payload, b"abc");
        // Without the padding, as sent over UDP.
        assert_eq!(ChannelData::parse(&buf[..7]).unwrap().payload, b"abc");
        // Empty payload.
        assert_eq!(
            ChannelData::parse(&[0x4F, 0xFF, 0, 0]).unwrap().payload,
            b""
        );
    }

    #[test]
    fn reject_bad_channel_data() {
        assert_eq!(
            ChannelData::parse(&[0x3F, 0xFF, 0, 0]),
            Err(StunError::BadChannelNumber)
        );
        assert_eq!(
            ChannelData::parse(&[0x80, 0x00, 0, 0]),
            Err(StunError::BadChannelNumber)
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0, 5, 1, 2, 3, 4]),
            Err(StunError::BadLength)
        );
        for len in 0..4 {
            assert_eq!(
                ChannelData::parse(&[0x40, 0x00, 0, 0][..len]),
                Err(StunError::TooShort)
            );
        }
    }

    #[test]
    fn classify() {
        assert!(is_channel_data(&[0x40]));
        assert!(is_channel_data(&[0x4F, 0]));
        assert!(!is_channel_data(&[0x3F]));
        assert!(is_channel_data(&[0x7F]));
        assert!(!is_channel_data(&[0x80]));
        assert!(!is_channel_data(&[]));
    }

    #[test]
    fn header_round_trip() {
        let mut buf = [0u8; 8];
        write_channel_data_header(&mut buf, 0x4abc, 4).unwrap();
        buf[4..].copy_from_slice(b"data");
        assert_eq!(
            ChannelData::parse(&buf),
            Ok(ChannelData {
                number: 0x4abc,
                payload: b"data"
            })
        );
        assert_eq!(
            write_channel_data_header(&mut buf, 0x8000, 4),
            Err(StunError::BadChannelNumber)
        );
        assert_eq!(
            write_channel_data_header(&mut buf[..3], 0x4000, 4),
            Err(StunError::BufferTooSmall)
        );
    }

    #[test]
    fn frame_stun() {
        let mut msg = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        msg.extend_from_slice(&[0; 12 + 8]);
        for n in 0..msg.len() {
            assert_eq!(frame_len(&msg[..n]), Ok(None), "{n}");
        }
        assert_eq!(frame_len(&msg), Ok(Some(Frame::Stun(28))));
        msg.extend_from_slice(&[0x40, 0x00]);
        assert_eq!(frame_len(&msg), Ok(Some(Frame::Stun(28))));

        assert_eq!(
            frame_len(&[0x00, 0x01, 0x00, 0x06]),
            Err(StunError::BadLength)
        );
        assert_eq!(
            frame_len(&[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4]),
            Ok(None)
        );
        assert_eq!(
            frame_len(&[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x43]),
            Err(StunError::NotStun)
        );
    }

    #[test]
    fn frame_channel_data() {
        let stream = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0, 0x40];
        for n in 0..12 {
            assert_eq!(frame_len(&stream[..n]), Ok(None), "{n}");
        }
        let frame = Frame::ChannelData { len: 9, padded: 12 };
        assert_eq!(frame_len(&stream), Ok(Some(frame)));
        assert_eq!(frame.stream_len(), 12);
        assert_eq!(
            ChannelData::parse(&stream[..9]).unwrap().payload,
            &[1, 2, 3, 4, 5]
        );
        assert_eq!(
            frame_len(&[0x4F, 0xFF, 0, 0]),
            Ok(Some(Frame::ChannelData { len: 4, padded: 4 }))
        );
    }

    #[test]
    fn frame_garbage() {
        for first in 0x80..=0xFF {
            assert_eq!(frame_len(&[first]), Err(StunError::NotStun), "{first:#x}");
            assert_eq!(
                frame_len(&[first, 0, 0, 0, 0, 0, 0, 0]),
                Err(StunError::NotStun)
            );
        }
        // ASCII letters fall in the ChannelData range (0x40..=0x7F): "GET " reads as channel
        // 0x4745 with 21536 bytes to come. Framing alone cannot reject it; the channel lookup
        // and the stream's idle timeout do.
        assert_eq!(frame_len(b"GET / HTTP/1.1\r\n"), Ok(None));
        assert_eq!(frame_len(b"POST / HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            frame_len(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Err(StunError::BadLength)
        );
        assert_eq!(frame_len(&[]), Ok(None));
    }
}
