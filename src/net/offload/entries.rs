//! The program's channel tables: their entries byte for byte as in relay.bpf.c, what one bound
//! channel becomes in them (both directions, with the route and MTU each takes), and writing
//! and deleting them.

use std::net::{SocketAddr, SocketAddrV4};

use aya::Pod;

use super::{Channel, FastPath, Route, SLOTS, Why, route};

// The map layouts, byte for byte as in relay.bpf.c. Addresses and ports are stored as their
// network-order bytes.

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(super) struct ChannelKey {
    client_ip: u32,
    listener_ip: u32,
    client_port: u16,
    listener_port: u16,
    channel: u16,
    pad: u16,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(super) struct ChannelEntry {
    relay_ip: u32,
    peer_ip: u32,
    relay_port: u16,
    peer_port: u16,
    slot: u32,
    max_payload: u16,
    pad: u16,
    ifindex: u32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(super) struct PeerKey {
    peer_ip: u32,
    relay_ip: u32,
    peer_port: u16,
    relay_port: u16,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(super) struct PeerEntry {
    client_ip: u32,
    listener_ip: u32,
    client_port: u16,
    listener_port: u16,
    channel: u16,
    max_payload: u16,
    slot: u32,
    ifindex: u32,
}

// SAFETY: plain `repr(C)` structs of integers whose padding is explicit, so every byte is
// initialised and any bit pattern is valid.
unsafe impl Pod for ChannelKey {}
// SAFETY: as above.
unsafe impl Pod for ChannelEntry {}
// SAFETY: as above.
unsafe impl Pod for PeerKey {}
// SAFETY: as above.
unsafe impl Pod for PeerEntry {}

impl FastPath {
    /// Writes both directions of `channel`, each with where the kernel's routing table sends
    /// it now; an existing entry for the same keys is replaced. A direction with no route the
    /// program can follow leaves the channel to user space.
    pub fn install(&self, channel: &Channel) -> Result<(), Why> {
        let to_peer = route_between(channel.relay, channel.peer)?;
        let to_client = route_between(channel.listener, channel.client)?;
        let (channel_key, channel_entry, peer_key, peer_entry) =
            entries(channel, to_peer, to_client)?;
        let mut tables = self.lock();
        tables
            .channels
            .insert(channel_key, channel_entry, 0)
            .map_err(|error| Why::Table(error.to_string()))?;
        if let Err(error) = tables.peers.insert(peer_key, peer_entry, 0) {
            let _ = tables.channels.remove(&channel_key);
            return Err(Why::Table(error.to_string()));
        }
        Ok(())
    }

    /// Deletes both directions of `channel` (absent entries are fine).
    pub fn remove(&self, channel: &Channel) -> Result<(), Why> {
        let (channel_key, _, peer_key, _) = entries(channel, Route::Local, Route::Local)?;
        let mut tables = self.lock();
        let removed = [
            tables.channels.remove(&channel_key),
            tables.peers.remove(&peer_key),
        ];
        for result in removed {
            match result {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => return Err(Why::Table(error.to_string())),
            }
        }
        Ok(())
    }
}

fn v4(address: SocketAddr) -> Result<SocketAddrV4, Why> {
    match address {
        SocketAddr::V4(address) => Ok(address),
        SocketAddr::V6(_) => Err(Why::NotIpv4(address)),
    }
}

fn ip_bytes(address: &SocketAddrV4) -> u32 {
    u32::from_ne_bytes(address.ip().octets())
}

fn port_bytes(address: &SocketAddrV4) -> u16 {
    u16::from_ne_bytes(address.port().to_be_bytes())
}

/// Where the kernel routes a datagram from `from` (one of this host's addresses) to `to`.
fn route_between(from: SocketAddr, to: SocketAddr) -> Result<Route, Why> {
    let (from, to) = (v4(from)?, v4(to)?);
    match route::lookup(*from.ip(), *to.ip()) {
        Ok(Some(route)) => Ok(route),
        Ok(None) => Err(Why::NoRoute(format!("{to} from {from}"))),
        Err(error) => Err(Why::Route {
            to: to.to_string(),
            error: error.to_string(),
        }),
    }
}

/// The interface index and the largest payload carried for a direction whose route is
/// `route` and whose datagrams have `overhead` bytes of IP and UDP (and ChannelData) headers.
fn direction(route: Route, max_payload: u16, overhead: u32) -> (u32, u16) {
    match route {
        Route::Local => (0, max_payload),
        Route::Interface { ifindex, mtu } => {
            let fits = mtu.saturating_sub(overhead).min(u32::from(max_payload));
            (ifindex, fits as u16)
        }
    }
}

fn entries(
    channel: &Channel,
    to_peer: Route,
    to_client: Route,
) -> Result<(ChannelKey, ChannelEntry, PeerKey, PeerEntry), Why> {
    let client = v4(channel.client)?;
    let listener = v4(channel.listener)?;
    let relay = v4(channel.relay)?;
    let peer = v4(channel.peer)?;
    if !crate::stun::channel::is_valid_channel_number(channel.channel) {
        return Err(Why::Table(format!(
            "channel {:#06x} is outside 0x4000..=0x7FFF",
            channel.channel
        )));
    }
    if channel.slot >= SLOTS {
        return Err(Why::Table(format!(
            "slot {} is outside 0..{SLOTS}",
            channel.slot
        )));
    }
    let number = u16::from_ne_bytes(channel.channel.to_be_bytes());
    // Leaving the host, a datagram must fit the path's MTU unfragmented (the program does not
    // fragment): a larger one goes up, and user space sends it.
    let (peer_ifindex, peer_payload) = direction(to_peer, channel.max_payload, 20 + 8);
    let (client_ifindex, client_payload) = direction(to_client, channel.max_payload, 20 + 8 + 4);
    Ok((
        ChannelKey {
            client_ip: ip_bytes(&client),
            listener_ip: ip_bytes(&listener),
            client_port: port_bytes(&client),
            listener_port: port_bytes(&listener),
            channel: number,
            pad: 0,
        },
        ChannelEntry {
            relay_ip: ip_bytes(&relay),
            peer_ip: ip_bytes(&peer),
            relay_port: port_bytes(&relay),
            peer_port: port_bytes(&peer),
            slot: channel.slot,
            max_payload: peer_payload,
            pad: 0,
            ifindex: peer_ifindex,
        },
        PeerKey {
            peer_ip: ip_bytes(&peer),
            relay_ip: ip_bytes(&relay),
            peer_port: port_bytes(&peer),
            relay_port: port_bytes(&relay),
        },
        PeerEntry {
            client_ip: ip_bytes(&client),
            listener_ip: ip_bytes(&listener),
            client_port: port_bytes(&client),
            listener_port: port_bytes(&listener),
            channel: number,
            max_payload: client_payload,
            slot: channel.slot,
            ifindex: client_ifindex,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::counters::RawCounters;
    use super::*;

    #[test]
    fn layouts_match_the_program() {
        // Sizes of the C structs in relay.bpf.c; the loader also checks them against BTF.
        assert_eq!(std::mem::size_of::<ChannelKey>(), 16);
        assert_eq!(std::mem::size_of::<ChannelEntry>(), 24);
        assert_eq!(std::mem::size_of::<PeerKey>(), 12);
        assert_eq!(std::mem::size_of::<PeerEntry>(), 24);
        assert_eq!(std::mem::size_of::<RawCounters>(), 32);
    }

    /// A channel between loopback addresses the program can carry.
    fn sample() -> Channel {
        Channel {
            client: "127.0.0.2:1234".parse().unwrap(),
            listener: "127.0.0.1:3478".parse().unwrap(),
            channel: 0x4001,
            relay: "127.0.0.1:50000".parse().unwrap(),
            peer: "127.0.0.3:9".parse().unwrap(),
            slot: 7,
            max_payload: 1500,
        }
    }

    #[test]
    fn entries_are_network_order() {
        let channel = sample();
        let (key, entry, peer_key, peer_entry) =
            entries(&channel, Route::Local, Route::Local).unwrap();
        assert_eq!(key.client_ip.to_ne_bytes(), [127, 0, 0, 2]);
        assert_eq!(key.client_port.to_ne_bytes(), 1234u16.to_be_bytes());
        assert_eq!(key.channel.to_ne_bytes(), [0x40, 0x01]);
        assert_eq!(entry.peer_port.to_ne_bytes(), 9u16.to_be_bytes());
        assert_eq!(peer_key.relay_port.to_ne_bytes(), 50000u16.to_be_bytes());
        assert_eq!(
            peer_entry.listener_port.to_ne_bytes(),
            3478u16.to_be_bytes()
        );
        assert_eq!(peer_entry.slot, 7);
    }

    #[test]
    fn a_route_off_the_host_names_its_interface_and_caps_the_payload_at_its_mtu() {
        let out = Route::Interface {
            ifindex: 9,
            mtu: 1500,
        };
        let (_, to_peer, _, to_client) = entries(&sample(), out, Route::Local).unwrap();
        assert_eq!((to_peer.ifindex, to_peer.max_payload), (9, 1500 - 28));
        assert_eq!((to_client.ifindex, to_client.max_payload), (0, 1500));
        let (_, to_peer, _, to_client) = entries(&sample(), Route::Local, out).unwrap();
        assert_eq!((to_peer.ifindex, to_peer.max_payload), (0, 1500));
        assert_eq!((to_client.ifindex, to_client.max_payload), (9, 1500 - 32));
        // An MTU below the headers carries nothing (a 0 payload is never carried).
        let tiny = Route::Interface {
            ifindex: 9,
            mtu: 20,
        };
        let (_, to_peer, _, _) = entries(&sample(), tiny, Route::Local).unwrap();
        assert_eq!(to_peer.max_payload, 0);
    }

    #[test]
    fn entries_refuse_what_the_program_cannot_carry() {
        let good = sample();
        for bad in [
            Channel {
                channel: 0x3FFF,
                ..good
            },
            Channel {
                channel: 0x8000,
                ..good
            },
            Channel {
                slot: SLOTS,
                ..good
            },
            Channel {
                peer: "[::1]:9".parse().unwrap(),
                ..good
            },
            Channel {
                client: "[2001:db8::1]:5000".parse().unwrap(),
                ..good
            },
        ] {
            assert!(
                entries(&bad, Route::Local, Route::Local).is_err(),
                "{bad:?}"
            );
        }
    }
}
