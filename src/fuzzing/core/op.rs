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
    /// The I/O layer answers one of the Connects (RFC 6062 §5.2) it was asked to make, in the
    /// order asked, `pending` picking which (an allocation may have ended since): `outcome` 0
    /// connected, 1 failed (447), 2 no capacity (508).
    ConnectResult {
        pending: u8,
        outcome: u8,
    },
    /// A ConnectionBind (RFC 6062 §5.4) from a new connection of slot `tuple` (a data tuple, or
    /// one of `TUPLES`), signed as [`Op::Stun`]'s `flags` say. Its CONNECTION-ID: one of the
    /// connections the core made (live or closed) picked by `connection`, or with
    /// [`RAW_ID`] set, `id` itself.
    ConnectionBind {
        tuple: u8,
        connection: u8,
        flags: u8,
        id: u32,
    },
    /// A peer (chosen by `peer` as for [`Op::Peer`]) connects to the relayed address of one of
    /// the allocations (RFC 6062 §5.3).
    PeerConnect {
        allocation: u8,
        peer: u8,
        port: u16,
    },
    /// A peer connection the core holds (pending or bound) or held is closed by the I/O layer:
    /// its splice ended, or the peer went.
    ConnectionClosed {
        connection: u8,
    },
    /// Time moves to the earliest ConnectionBind deadline (or 30 s on, without one) plus
    /// `offset` milliseconds (signed: -128 to 127), and the timer fires.
    BindDeadline {
        offset: i8,
    },
}

/// [`Op::ConnectionBind`]: the CONNECTION-ID is the op's `id`, not a connection's.
pub const RAW_ID: u8 = 0x80;

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

/// Tags 0 to 13 are the operations the committed corpus was written with; those after were
/// appended (a tag byte is read modulo this).
pub(super) const OP_COUNT: u8 = 19;

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
            13 => Op::Alternates { count: input.u8()? },
            14 => Op::ConnectResult {
                pending: input.u8()?,
                outcome: input.u8()?,
            },
            15 => Op::ConnectionBind {
                tuple: input.u8()?,
                connection: input.u8()?,
                flags: input.u8()?,
                id: u32::from(input.u16()?) << 16 | u32::from(input.u16()?),
            },
            16 => Op::PeerConnect {
                allocation: input.u8()?,
                peer: input.u8()?,
                port: input.u16()?,
            },
            17 => Op::ConnectionClosed {
                connection: input.u8()?,
            },
            _ => Op::BindDeadline {
                offset: i8::from_be_bytes([input.u8()?]),
            },
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
            Op::ConnectResult { pending, outcome } => {
                out.extend_from_slice(&[14, pending, outcome]);
            }
            Op::ConnectionBind {
                tuple,
                connection,
                flags,
                id,
            } => {
                out.extend_from_slice(&[15, tuple, connection, flags]);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Op::PeerConnect {
                allocation,
                peer,
                port,
            } => {
                out.extend_from_slice(&[16, allocation, peer]);
                out.extend_from_slice(&port.to_be_bytes());
            }
            Op::ConnectionClosed { connection } => out.extend_from_slice(&[17, connection]),
            Op::BindDeadline { offset } => out.extend_from_slice(&[18, offset.to_be_bytes()[0]]),
        }
    }
}
