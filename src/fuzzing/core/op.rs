//! The input format of the core targets: [`Op`], one step each, read from the fuzzer's bytes and
//! written back (for seeds), and the flags of [`Op::Stun`].

use crate::fuzzing::{Input, push_chunk};

/// One step of a core input. [`Op::decode`] reads it from the fuzzer's bytes (any byte is some
/// operation); [`Op::encode`] writes it (for seeds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Bytes from the client of `TUPLES[tuple]`: one datagram on UDP; on TCP/TLS the next bytes
    /// of the stream, framed as the I/O layer frames them.
    Client {
        tuple: u8,
        data: &'a [u8],
    },
    /// A STUN message of type `message_type` and transaction id `[tid; 12]` around
    /// `attributes` (type, length, value, read leniently). Flag [`FINGERPRINT`] adds
    /// FINGERPRINT; in the authenticated target the message is signed as the other flags say.
    Stun {
        tuple: u8,
        message_type: u16,
        tid: u8,
        flags: u8,
        attributes: &'a [u8],
    },
    /// A datagram from a peer (chosen by `peer`, see `Harness::peer_address`) to the relay
    /// socket of one of the allocations.
    Peer {
        allocation: u8,
        peer: u8,
        port: u16,
        data: &'a [u8],
    },
    /// Simulated time passes.
    Wait {
        millis: u16,
    },
    WaitSeconds {
        seconds: u16,
    },
    /// Time moves on to the core's next deadline (if later) and `handle_timeout` runs.
    Timeout,
    /// How the next relay sockets open: 0 (and 3 and above) opened, 1 no port, 2 bad token.
    RelayOutcome {
        outcome: u8,
    },
    /// The cluster answers one of the pending lease requests.
    Lease {
        pending: u8,
        granted: bool,
    },
    /// The TCP/TLS connection of `TUPLES[tuple]` closes.
    Disconnect {
        tuple: u8,
    },
    /// An operator closes one of the allocations.
    Close {
        allocation: u8,
    },
    /// A username or user is revoked.
    Revoke {
        name: u8,
    },
    /// The configuration is reloaded with another flavor.
    Reload {
        flavor: u8,
    },
    /// The node starts or stops draining.
    Drain {
        on: bool,
    },
    /// The cluster view changes to the first `count` of a few other nodes.
    Alternates {
        count: u8,
    },
}

/// [`Op::Stun`] flag: add FINGERPRINT.
pub const FINGERPRINT: u8 = 0x01;
/// [`Op::Stun`] flags of the authenticated target: which user (2 bits: alice, bob, a REST
/// username, an expired REST username).
pub const USER_SHIFT: u8 = 1;
/// A realm other than the server's.
pub const WRONG_REALM: u8 = 0x08;
/// MESSAGE-INTEGRITY under a wrong key.
pub const WRONG_KEY: u8 = 0x10;
/// USERNAME, REALM and NONCE after the fuzzer's attributes rather than before.
pub const CREDENTIALS_LAST: u8 = 0x20;
/// No NONCE.
pub const NO_NONCE: u8 = 0x40;
/// No MESSAGE-INTEGRITY.
pub const NO_INTEGRITY: u8 = 0x80;

pub(super) const OP_COUNT: u8 = 14;

impl<'a> Op<'a> {
    /// Reads the next operation; `None` at the end of the input.
    pub fn decode(input: &mut Input<'a>) -> Option<Op<'a>> {
        let tag = input.u8()? % OP_COUNT;
        Some(match tag {
            0 => Op::Client {
                tuple: input.u8()?,
                data: input.chunk()?,
            },
            1 => Op::Stun {
                tuple: input.u8()?,
                message_type: input.u16()?,
                tid: input.u8()?,
                flags: input.u8()?,
                attributes: input.chunk()?,
            },
            2 => Op::Peer {
                allocation: input.u8()?,
                peer: input.u8()?,
                port: input.u16()?,
                data: input.chunk()?,
            },
            3 => Op::Wait {
                millis: input.u16()?,
            },
            4 => Op::WaitSeconds {
                seconds: input.u16()?,
            },
            5 => Op::Timeout,
            6 => Op::RelayOutcome {
                outcome: input.u8()?,
            },
            7 => Op::Lease {
                pending: input.u8()?,
                granted: input.u8()? & 1 == 0,
            },
            8 => Op::Disconnect { tuple: input.u8()? },
            9 => Op::Close {
                allocation: input.u8()?,
            },
            10 => Op::Revoke { name: input.u8()? },
            11 => Op::Reload {
                flavor: input.u8()?,
            },
            12 => Op::Drain {
                on: input.u8()? & 1 == 1,
            },
            _ => Op::Alternates { count: input.u8()? },
        })
    }

    /// Appends the operation as [`Op::decode`] reads it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Client { tuple, data } => {
                out.extend_from_slice(&[0, tuple]);
                push_chunk(out, data);
            }
            Op::Stun {
                tuple,
                message_type,
                tid,
                flags,
                attributes,
            } => {
                out.extend_from_slice(&[1, tuple]);
                out.extend_from_slice(&message_type.to_be_bytes());
                out.extend_from_slice(&[tid, flags]);
                push_chunk(out, attributes);
            }
            Op::Peer {
                allocation,
                peer,
                port,
                data,
            } => {
                out.extend_from_slice(&[2, allocation, peer]);
                out.extend_from_slice(&port.to_be_bytes());
                push_chunk(out, data);
            }
            Op::Wait { millis } => {
                out.push(3);
                out.extend_from_slice(&millis.to_be_bytes());
            }
            Op::WaitSeconds { seconds } => {
                out.push(4);
                out.extend_from_slice(&seconds.to_be_bytes());
            }
            Op::Timeout => out.push(5),
            Op::RelayOutcome { outcome } => out.extend_from_slice(&[6, outcome]),
            Op::Lease { pending, granted } => {
                out.extend_from_slice(&[7, pending, u8::from(!granted)]);
            }
            Op::Disconnect { tuple } => out.extend_from_slice(&[8, tuple]),
            Op::Close { allocation } => out.extend_from_slice(&[9, allocation]),
            Op::Revoke { name } => out.extend_from_slice(&[10, name]),
            Op::Reload { flavor } => out.extend_from_slice(&[11, flavor]),
            Op::Drain { on } => out.extend_from_slice(&[12, u8::from(on)]),
            Op::Alternates { count } => out.extend_from_slice(&[13, count]),
        }
    }
}
