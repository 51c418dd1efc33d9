//! A peer's side of a core input: datagrams to the relay sockets (or one just closed), and the
//! check that what the core forwards to the client is the datagram, framed as it must be.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;

use crate::config::Transport;
use crate::stun::{self, ChannelData, Class, Frame, Message, Method, attr};
use crate::turn::{
    AllocationId, FiveTuple, PEER_HEADROOM, PEER_TAILROOM, PeerAction, policy::canonical_ip,
};

use super::Harness;

impl Harness {
    /// A peer datagram to one of the relay sockets (or one just closed).
    pub(super) fn peer(&mut self, allocation: u8, peer: u8, port: u16, data: &[u8]) {
        let Some(id) = self.relay_target(allocation) else {
            return;
        };
        let peer = self.peer_address(id, peer, port);
        let start = PEER_HEADROOM;
        let mut buf = vec![0u8; start + data.len() + PEER_TAILROOM];
        buf[start..start + data.len()].copy_from_slice(data);
        let action =
            self.server
                .handle_peer(self.now, id, peer, &mut buf, start..start + data.len());
        if let PeerAction::Forward { to, frame } = action {
            self.check_forward(id, peer, data, to, &buf, frame);
        }
        self.drain_events();
    }

    /// The allocation whose relayed address a peer reaches: one with a relay, or one just
    /// closed, picked by `selector`.
    pub(super) fn relay_target(&self, selector: u8) -> Option<AllocationId> {
        let ids: Vec<AllocationId> = self
            .relays
            .keys()
            .copied()
            .chain(self.closed.iter().copied())
            .collect();
        (!ids.is_empty()).then(|| ids[usize::from(selector) % ids.len()])
    }

    /// A peer address for `id`: one of its permissions or channels, loopback, or a public
    /// address, IPv4, IPv6 or IPv4-mapped.
    pub(super) fn peer_address(&self, id: AllocationId, selector: u8, port: u16) -> SocketAddr {
        let alloc = self.server.allocation(id);
        let index = usize::from(selector / 6);
        match selector % 6 {
            0 => {
                let ips: Vec<IpAddr> = alloc
                    .map(|a| a.permissions().iter().map(|p| p.ip).collect())
                    .unwrap_or_default();
                match ips.get(index % ips.len().max(1)) {
                    Some(&ip) => SocketAddr::new(ip, port),
                    None => SocketAddr::from(([127, 0, 0, 1], port)),
                }
            }
            1 => {
                let peers: Vec<SocketAddr> = alloc
                    .map(|a| a.channels().iter().map(|c| c.peer).collect())
                    .unwrap_or_default();
                peers
                    .get(index % peers.len().max(1))
                    .copied()
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 2], port)))
            }
            2 => SocketAddr::from(([127, 0, 0, 1], port)),
            3 => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            4 => SocketAddr::from(([8, 8, 8, 8], port)),
            _ => SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped(), port)),
        }
    }

    /// A frame for the client built from a peer datagram: the right client, a channel bound to
    /// that peer or a Data indication naming it, the payload unchanged.
    pub(super) fn check_forward(
        &self,
        id: AllocationId,
        peer: SocketAddr,
        data: &[u8],
        to: FiveTuple,
        buf: &[u8],
        frame: Range<usize>,
    ) {
        assert!(frame.start <= frame.end && frame.end <= buf.len());
        let alloc = self
            .server
            .allocation(id)
            .expect("forward from an allocation that is gone");
        assert_eq!(to, alloc.tuple(), "forward to another client");
        let peer = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        assert!(
            alloc.permits(peer.ip(), self.now),
            "forward without a permission"
        );
        let bytes = &buf[frame];
        let stream = to.transport != Transport::Udp;
        if stream {
            let framed = stun::frame_len(bytes).map(|f| f.map(Frame::stream_len));
            assert_eq!(
                framed,
                Ok(Some(bytes.len())),
                "forwarded frame does not frame"
            );
        }
        if stun::channel::is_channel_data(bytes) {
            let cd = ChannelData::parse(bytes).expect("forwarded ChannelData parses");
            assert_eq!(cd.payload, data);
            assert_eq!(alloc.channel_for_peer(peer, self.now), Some(cd.number));
        } else {
            let msg = Message::parse(bytes).expect("the Data indication parses");
            assert_eq!(
                (msg.method(), msg.class()),
                (Method::DATA, Class::Indication)
            );
            let named = msg.get(attr::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS");
            assert_eq!(
                attr::decode_xor_address(named, &msg.transaction_id()),
                Ok(peer)
            );
            assert_eq!(msg.get(attr::DATA), Some(data));
        }
    }
}
