//! Where the kernel routes a datagram sent from one of this host's IPv4 addresses: out of which
//! interface (and that path's MTU), or to this host itself. Asked of the kernel's routing
//! table over rtnetlink, the question `ip route get <to> from <from>` asks, once per channel
//! the fast path carries (never per datagram): the program in the kernel then sends the
//! rewritten datagram where this said.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To a socket on this host.
    Local,
    /// Out of interface `ifindex`, whose path takes IP packets of at most `mtu` bytes.
    Interface { ifindex: u32, mtu: u32 },
}

// rtnetlink's numbers (linux/rtnetlink.h, linux/netlink.h), which the libc crate lacks in part.
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_METRICS: u16 = 8;
const RTAX_MTU: u16 = 2;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
/// nlmsghdr (16 bytes) and rtmsg (12 bytes).
const HEADER: usize = 16;
const RTMSG: usize = 12;
/// The kernel answers within microseconds; this only bounds a kernel that does not.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// The route from `from` (one of this host's addresses, or unspecified) to `to`. `Ok(None)`:
/// the kernel has a route but not one the fast path can follow (blackhole, unreachable,
/// broadcast, multicast...), or none at all.
pub fn lookup(from: Ipv4Addr, to: Ipv4Addr) -> io::Result<Option<Route>> {
    let socket = open()?;
    let request = request(from, to);
    // SAFETY: a plain send of an initialised buffer on a socket we own.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 4096];
    // SAFETY: recv into a buffer we own, at most its length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            answer.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    parse(&answer[..received as usize])
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: ANSWER_WAIT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// RTM_GETROUTE for `to`, from `from` unless it is unspecified.
fn request(from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let mut message = Vec::with_capacity(HEADER + RTMSG + 16);
    message.extend_from_slice(&[0; 4]); // length, written last
    message.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let src_len = if from.is_unspecified() { 0 } else { 32 };
    message.extend_from_slice(&[libc::AF_INET as u8, 32, src_len, 0, 0, 0, 0, 0]);
    message.extend_from_slice(&0u32.to_ne_bytes());
    attribute(&mut message, RTA_DST, &to.octets());
    if !from.is_unspecified() {
        attribute(&mut message, RTA_SRC, &from.octets());
    }
    let length = message.len() as u32;
    message[..4].copy_from_slice(&length.to_ne_bytes());
    message
}

fn attribute(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let length = 4 + value.len();
    message.extend_from_slice(&(length as u16).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize(message.len().next_multiple_of(4), 0);
}

/// Reads the kernel's answer: a route, an error, or something the fast path cannot follow.
fn parse(answer: &[u8]) -> io::Result<Option<Route>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink answer");
    if answer.len() < HEADER {
        return Err(malformed());
    }
    let length = u32::from_ne_bytes(answer[0..4].try_into().expect("4 bytes")) as usize;
    let kind = u16::from_ne_bytes(answer[4..6].try_into().expect("2 bytes"));
    if length < HEADER || length > answer.len() {
        return Err(malformed());
    }
    let body = &answer[HEADER..length];
    if kind == NLMSG_ERROR {
        let code = body
            .get(..4)
            .map(|bytes| i32::from_ne_bytes(bytes.try_into().expect("4 bytes")))
            .ok_or_else(malformed)?;
        return match -code {
            // No route to the destination: the fast path does not carry the channel (user
            // space's send will fail the same way).
            libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL => Ok(None),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    if kind != RTM_NEWROUTE || body.len() < RTMSG {
        return Err(malformed());
    }
    let route_type = body[7];
    let mut oif = None;
    let mut route_mtu = None;
    for (kind, value) in attributes(&body[RTMSG..]) {
        match kind {
            RTA_OIF if value.len() >= 4 => {
                oif = Some(u32::from_ne_bytes(value[..4].try_into().expect("4 bytes")));
            }
            RTA_METRICS => {
                for (metric, value) in attributes(value) {
                    if metric == RTAX_MTU && value.len() >= 4 {
                        route_mtu = Some(u32::from_ne_bytes(value[..4].try_into().expect("4")));
                    }
                }
            }
            _ => {}
        }
    }
    match route_type {
        RTN_LOCAL => Ok(Some(Route::Local)),
        RTN_UNICAST => {
            let Some(ifindex) = oif else {
                return Err(malformed());
            };
            let device_mtu = interface_mtu(ifindex)?;
            let mtu = route_mtu.map_or(device_mtu, |mtu| mtu.min(device_mtu));
            Ok(Some(Route::Interface { ifindex, mtu }))
        }
        _ => Ok(None),
    }
}

/// The (type, value) attributes packed in `bytes`; stops at the first malformed one.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let length = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        // Nested attributes carry a flag in the type's top bits.
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        if length < 4 || length > bytes.len() {
            return None;
        }
        let value = &bytes[4..length];
        bytes = &bytes[length.next_multiple_of(4).min(bytes.len())..];
        Some((kind, value))
    })
}

/// The MTU of interface `ifindex` (SIOCGIFMTU, in this process's network namespace).
fn interface_mtu(ifindex: u32) -> io::Result<u32> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included, into `name`.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name is copied in below, NUL-terminated.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    request.ifr_name = name;
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_ifru.ifru_mtu of the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the union's mtu member.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| {
        // SAFETY: `name` is NUL-terminated (if_indextoname succeeded).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy();
        io::Error::new(io::ErrorKind::InvalidData, format!("{name}: MTU {mtu}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_local() {
        assert_eq!(
            lookup(Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)).unwrap(),
            Some(Route::Local)
        );
        assert_eq!(
            lookup(Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST).unwrap(),
            Some(Route::Local)
        );
    }

    #[test]
    fn a_request_is_what_ip_route_get_sends() {
        let message = request(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        // Header, rtmsg, two 8-byte attributes.
        assert_eq!(message.len(), 16 + 12 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(message[..4].try_into().unwrap()), 44);
        assert_eq!(&message[32..36], &[10, 0, 0, 2]);
        assert_eq!(&message[40..44], &[10, 0, 0, 1]);
        assert_eq!(
            request(Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST).len(),
            16 + 12 + 8
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for answer in [
            &[][..],
            &[0u8; 15][..],
            &[200, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[16, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[16, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(parse(answer).is_err(), "{answer:?}");
        }
        // An unreachable destination is "not carried", not an error.
        let mut unreachable = vec![20, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        unreachable.extend_from_slice(&(-libc::ENETUNREACH).to_ne_bytes());
        assert_eq!(parse(&unreachable).unwrap(), None);
        // Attributes that run past their message end the walk.
        assert_eq!(attributes(&[200, 0, 4, 0, 1, 2]).count(), 0);
        assert_eq!(attributes(&[2, 0, 4, 0]).count(), 0);
    }
}
