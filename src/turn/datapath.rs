//! The data path: a client's message comes in ([`Server::handle_client`]), ChannelData and
//! Send indications go to their peer, and a peer's datagram is framed for its client in place.
//! Per packet: no heap allocation, no log line, no lock.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use super::Transport;
use super::{
    AllocationId, ClientAction, FiveTuple, MAX_PEER_PAYLOAD, MAX_REQUEST_LEN, PEER_HEADROOM,
    PEER_TAILROOM, PeerAction, Server, canonical_addr,
};
use crate::stun::{self, ChannelData, Class, Message, MessageWriter, Method, TransactionId, attr};

impl Server {
    /// Handles one message from a client: a STUN message or a ChannelData frame (on stream
    /// transports, exactly one frame as delimited by [`stun::frame_len`]). Replies are written to
    /// `out`, which must hold at least 1500 bytes. A request over [`MAX_REQUEST_LEN`] bytes and
    /// a message that does not parse (more than [`stun::MAX_ATTRIBUTES`] attributes, say) are
    /// counted as malformed and dropped; whatever the input, the work is linear in its size.
    pub fn handle_client(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        data: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        match data.first() {
            Some(0x40..=0x7f) => self.handle_channel_data(now, &tuple, data),
            Some(0x00..=0x3f)
                if data.len() > MAX_REQUEST_LEN
                    && stun::message_class(data) == Some(Class::Request) =>
            {
                self.stats.malformed += 1;
                ClientAction::None
            }
            Some(0x00..=0x3f) => match Message::parse(data) {
                Ok(msg) => self.handle_message(now, &tuple, &msg, data, out),
                Err(_) => {
                    self.stats.malformed += 1;
                    ClientAction::None
                }
            },
            _ => {
                self.stats.malformed += 1;
                ClientAction::None
            }
        }
    }

    fn handle_channel_data(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        data: &[u8],
    ) -> ClientAction {
        let Ok(frame) = ChannelData::parse(data) else {
            self.stats.malformed += 1;
            return ClientAction::None;
        };
        let epoch = self.config.epoch;
        let Some(&id) = self.by_tuple.get(tuple) else {
            self.stats.dropped_no_allocation += 1;
            return ClientAction::None;
        };
        // `by_tuple` only holds live ids.
        let Some(alloc) = self.allocation_mut(id) else {
            return ClientAction::None;
        };
        let Some(peer) = alloc.channel(frame.number, now).map(|c| c.peer) else {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        };
        if !alloc.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        }
        if !alloc.charge(epoch, now, frame.payload.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientAction::None;
        }
        let len = frame.payload.len() as u64;
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += len;
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += len;
        ClientAction::Relay {
            allocation: id,
            peer,
            payload: 4..4 + frame.payload.len(),
        }
    }

    pub(super) fn handle_send(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        data: &[u8],
    ) -> ClientAction {
        let Some(&id) = self.by_tuple.get(tuple) else {
            self.stats.dropped_no_allocation += 1;
            return ClientAction::None;
        };
        let tid = msg.transaction_id();
        let (Some(peer), Some(payload)) = (msg.get(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.malformed += 1;
            return ClientAction::None;
        };
        let Ok(peer) = attr::decode_xor_address(peer, &tid) else {
            self.stats.malformed += 1;
            return ClientAction::None;
        };
        let peer = canonical_addr(peer);
        if self.policy.is_own_socket(peer) || !self.policy.permits_ip(peer.ip()) {
            self.stats.dropped_policy += 1;
            return ClientAction::None;
        }
        let epoch = self.config.epoch;
        let Some(alloc) = self.allocation_mut(id) else {
            return ClientAction::None;
        };
        // A TCP allocation relays over its connections only (RFC 6062 §4).
        if alloc.relayed.is_none()
            || alloc.is_relayed(peer)
            || alloc.tcp.is_some()
            || !alloc.permits(peer.ip(), now)
        {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        }
        if !alloc.charge(epoch, now, payload.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientAction::None;
        }
        // `payload` borrows from `data`, so the offset is in range.
        let start = payload.as_ptr() as usize - data.as_ptr() as usize;
        let len = payload.len() as u64;
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += len;
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += len;
        ClientAction::Relay {
            allocation: id,
            peer,
            payload: start..start + payload.len(),
        }
    }

    /// Handles a datagram from `peer` on the relay socket of `allocation`. The datagram is
    /// `buf[payload]`, with at least [`PEER_HEADROOM`] bytes before it and [`PEER_TAILROOM`]
    /// after it, where the frame for the client is built in place.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerAction {
        let peer = canonical_addr(peer);
        let len = payload.len();
        if payload.start < PEER_HEADROOM || buf.len() < payload.end + PEER_TAILROOM {
            // The caller's buffer breaks the contract: not a packet's fault, nothing to count.
            return PeerAction::None;
        }
        if len > MAX_PEER_PAYLOAD {
            self.stats.dropped_too_large += 1;
            return PeerAction::None;
        }
        let epoch = self.config.epoch;
        self.indications = self.indications.wrapping_add(1);
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.token_key[..4]);
        tid[4..].copy_from_slice(&self.indications.to_be_bytes());
        let Some(alloc) = self.allocation_mut(allocation) else {
            self.stats.dropped_no_allocation += 1;
            return PeerAction::None;
        };
        if !alloc.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return PeerAction::None;
        }
        if !alloc.charge(epoch, now, len) {
            self.stats.dropped_bandwidth += 1;
            return PeerAction::None;
        }
        let to = alloc.tuple;
        let stream = to.transport != Transport::Udp;

        let frame = match alloc.channel_for_peer(peer, now) {
            Some(number) => {
                let start = payload.start - 4;
                // The length was checked against MAX_PEER_PAYLOAD above.
                if stun::write_channel_data_header(&mut buf[start..], number, len as u16).is_err() {
                    return PeerAction::None;
                }
                let mut end = payload.end;
                if stream {
                    let padded = (len + 3) & !3;
                    buf[end..payload.start + padded].fill(0);
                    end = payload.start + padded;
                }
                start..end
            }
            None => match write_data_indication(buf, payload.clone(), peer, TransactionId(tid)) {
                Some(frame) => frame,
                None => return PeerAction::None,
            },
        };
        alloc.traffic.to_client_packets += 1;
        alloc.traffic.to_client_bytes += len as u64;
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += len as u64;
        PeerAction::Forward { to, frame }
    }
}

/// Writes a Data indication around `buf[payload]` in place (header and XOR-PEER-ADDRESS before,
/// padding after) and returns the frame's range.
fn write_data_indication(
    buf: &mut [u8],
    payload: Range<usize>,
    peer: SocketAddr,
    tid: TransactionId,
) -> Option<Range<usize>> {
    let len = payload.len();
    let peer_attr = if peer.is_ipv4() { 12 } else { 24 };
    let start = payload
        .start
        .checked_sub(stun::HEADER_LEN + peer_attr + 4)?;
    let written = {
        let mut w = MessageWriter::new(
            &mut buf[start..payload.start],
            Method::DATA,
            Class::Indication,
            tid,
        )
        .ok()?;
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).ok()?;
        w.finish()
    };
    let data_header = start + written;
    if data_header + 4 != payload.start {
        return None;
    }
    buf[data_header..data_header + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    buf[data_header + 2..data_header + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let padded = (len + 3) & !3;
    buf[payload.end..payload.start + padded].fill(0);
    let body = (written - stun::HEADER_LEN + 4 + padded) as u16;
    buf[start + 2..start + 4].copy_from_slice(&body.to_be_bytes());
    Some(start..payload.start + padded)
}
