//! This host's addresses: every interface's (a wildcard listener is reachable on each, so
//! none is a valid peer; `if-addrs` lists them), and the IPv4 address the default route sends
//! from.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use crate::turn::HostAddresses;

/// How often the addresses of this host's interfaces are enumerated again (they also are on
/// every reload): a wildcard listener is reachable on each, so each is an own socket's address.
pub const HOST_ADDRESS_REFRESH: Duration = Duration::from_secs(5);

/// Logs how the host's addresses changed (nothing when they did not).
pub(super) fn log_host_change(old: &HostAddresses, new: &HostAddresses, noticed_by: &'static str) {
    if old == new {
        return;
    }
    let added: Vec<IpAddr> = new.iter().filter(|ip| !old.contains(*ip)).collect();
    let removed: Vec<IpAddr> = old.iter().filter(|ip| !new.contains(*ip)).collect();
    tracing::info!(
        ?added,
        ?removed,
        addresses = new.len(),
        noticed_by,
        "host addresses changed"
    );
}

/// Where [`default_route_ipv4`] pretends to send: a documentation address (RFC 5737
/// TEST-NET-3), which a deployment's routing table has no route for but the default one.
const ANY_OUTSIDE_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 9));

/// The IPv4 address the kernel would send from to an address outside this host's networks:
/// the local address of a UDP socket connected (which sends no packet) to one. `None` without
/// a default route.
pub fn default_route_ipv4() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(ANY_OUTSIDE_ADDRESS).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// The addresses of every interface of this host (IPv4 and IPv6, loopback and link-local
/// included), or `None` when they cannot be enumerated.
pub(super) fn host_addresses() -> Option<HostAddresses> {
    let interfaces = if_addrs::get_if_addrs().ok()?;
    Some(HostAddresses::new(
        interfaces.into_iter().map(|interface| interface.ip()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_hold_loopback_and_the_default_route_address() {
        let host = host_addresses().expect("getifaddrs works");
        assert!(host.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)), "{host:?}");
        if let Some(default) = default_route_ipv4() {
            assert!(
                host.contains(IpAddr::V4(default)),
                "{default} not in {host:?}"
            );
        }
    }
}
