//! Relayed data as the client hands it out: ChannelData and Data indications found in a frame
//! from the server, borrowed from it, never copied.

use std::net::SocketAddr;

use crate::stun::channel::CHANNEL_DATA_HEADER_LEN;
use crate::stun::{self, ChannelData, Class, Message, Method, attr};

/// Data relayed from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A ChannelData message on a bound channel.
    ChannelData { number: u16, payload: &'a [u8] },
    /// A Data indication from `peer`.
    Data { peer: SocketAddr, payload: &'a [u8] },
}

impl<'a> Received<'a> {
    pub fn payload(&self) -> &'a [u8] {
        match *self {
            Received::ChannelData { payload, .. } | Received::Data { payload, .. } => payload,
        }
    }
}

/// Data found in a frame, as ranges of it (so the frame can be re-borrowed).
#[derive(Clone, Copy)]
pub(super) enum DataFrame {
    ChannelData {
        number: u16,
        payload: (usize, usize),
    },
    Data {
        peer: SocketAddr,
        payload: (usize, usize),
    },
}

impl DataFrame {
    pub(super) fn borrow(self, frame: &[u8]) -> Received<'_> {
        let slice = |(start, end): (usize, usize)| frame.get(start..end).unwrap_or_default();
        match self {
            DataFrame::ChannelData { number, payload } => Received::ChannelData {
                number,
                payload: slice(payload),
            },
            DataFrame::Data { peer, payload } => Received::Data {
                peer,
                payload: slice(payload),
            },
        }
    }
}

/// Whether `frame` carries relayed data: ChannelData, or a Data indication with a peer
/// address and DATA.
pub(super) fn classify(frame: &[u8]) -> Option<DataFrame> {
    if stun::channel::is_channel_data(frame) {
        let data = ChannelData::parse(frame).ok()?;
        let start = CHANNEL_DATA_HEADER_LEN;
        return Some(DataFrame::ChannelData {
            number: data.number,
            payload: (start, start + data.payload.len()),
        });
    }
    let msg = Message::parse(frame).ok()?;
    if msg.method() != Method::DATA || msg.class() != Class::Indication {
        return None;
    }
    let peer =
        attr::decode_xor_address(msg.get(attr::XOR_PEER_ADDRESS)?, &msg.transaction_id()).ok()?;
    let data = msg.get(attr::DATA)?;
    let start = offset_in(frame, data)?;
    Some(DataFrame::Data {
        peer,
        payload: (start, start + data.len()),
    })
}

/// Where `part`, a sub-slice of `whole`, starts in it.
fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{MessageWriter, TransactionId};

    #[test]
    fn data_frames_are_classified_without_copying() {
        let mut frame = [0u8; 64];
        stun::write_channel_data_header(&mut frame, 0x4001, 3).unwrap();
        frame[4..7].copy_from_slice(b"abc");
        let data = classify(&frame[..7]).unwrap().borrow(&frame[..7]);
        assert_eq!(
            data,
            Received::ChannelData {
                number: 0x4001,
                payload: b"abc"
            }
        );
        // A Data indication with its peer; one without DATA is not data.
        let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let tid = TransactionId([3; 12]);
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Method::DATA, Class::Indication, tid).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        w.attribute(attr::DATA, b"hello").unwrap();
        let n = w.finish();
        let data = classify(&buf[..n]).unwrap().borrow(&buf[..n]);
        assert_eq!(
            data,
            Received::Data {
                peer,
                payload: b"hello"
            }
        );
        let mut w = MessageWriter::new(&mut buf, Method::DATA, Class::Indication, tid).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        let n = w.finish();
        assert!(classify(&buf[..n]).is_none());
        // Truncated and garbage frames are not data either.
        for len in 0..7 {
            assert!(classify(&frame[..len]).is_none(), "{len}");
        }
        assert!(classify(&[0xFF; 32]).is_none());
    }
}
