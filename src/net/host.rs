//! This host's addresses: every interface's (a wildcard listener is reachable on each, so
//! none is a valid peer), and the default-route interface's IPv4 address.

use std::net::{IpAddr, Ipv4Addr};
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

/// The IPv4 address of the interface holding the default route, from `/proc/net/route` and
/// `getifaddrs`. Sends no packet.
pub fn default_route_ipv4() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let interface = routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let metric: u32 = fields.get(6)?.parse().ok()?;
            (fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000"))
                .then(|| (metric, fields[0].to_owned()))
        })
        .min()?
        .1;
    interface_ipv4(&interface)
}

fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    interface_addresses()?
        .into_iter()
        .find_map(|(interface, ip)| match ip {
            IpAddr::V4(v4) if interface == name => Some(v4),
            _ => None,
        })
}

/// The addresses of every interface of this host (IPv4 and IPv6, loopback included), or
/// `None` when they cannot be enumerated.
pub(super) fn host_addresses() -> Option<HostAddresses> {
    let addresses = interface_addresses()?;
    Some(HostAddresses::new(addresses.into_iter().map(|(_, ip)| ip)))
}

/// Every (interface name, address) pair `getifaddrs` lists, in its order.
fn interface_addresses() -> Option<Vec<(String, IpAddr)>> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = Vec::new();
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        let name = name.to_string_lossy().into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it declares.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            found.push((name, IpAddr::V4(ip)));
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            found.push((name, IpAddr::V6(ip)));
        }
    }
    // SAFETY: `addrs` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_interface_has_an_ipv4_address() {
        assert_eq!(interface_ipv4("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_ipv4("no-such-interface"), None);
    }

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
