//! Hand-made IPv4 packets for the fast-path tests: UDP datagrams and IP packets built byte by
//! byte, and a raw socket (IP_HDRINCL, root) that sends them whole, so that a test controls what the kernel's own stack would not let it write
//! (IP options, fragments, a wrong UDP checksum).

use std::net::{Ipv4Addr, SocketAddr};

/// A UDP header (checksum 0, legal over IPv4; see [`udp_checksum`]) and payload.
pub fn udp_datagram(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&from.port().to_be_bytes());
    datagram.extend_from_slice(&to.port().to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// An IPv4 packet from `from` to `to` carrying `payload` (a UDP datagram or a fragment of
/// one) with the given ID, fragment field (flags and offset) and options, its header checksum
/// filled in.
pub fn ip_packet(
    from: Ipv4Addr,
    to: Ipv4Addr,
    payload: &[u8],
    id: u16,
    fragment: u16,
    options: &[u8],
) -> Vec<u8> {
    let header_len = 20 + options.len();
    let mut packet = Vec::with_capacity(header_len + payload.len());
    packet.push(0x40 | (header_len / 4) as u8);
    packet.push(0);
    packet.extend_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&fragment.to_be_bytes());
    packet.push(64);
    packet.push(17);
    packet.extend_from_slice(&[0, 0]); // checksum, below
    packet.extend_from_slice(&from.octets());
    packet.extend_from_slice(&to.octets());
    packet.extend_from_slice(options);
    let check = !ones_complement_sum(&[&packet]);
    packet[10..12].copy_from_slice(&check.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// The UDP checksum of `udp` (a header with a zero checksum, and the payload) from `from` to
/// `to`: over the pseudo-header and the datagram; a computed 0 is sent as 0xffff.
pub fn udp_checksum(from: Ipv4Addr, to: Ipv4Addr, udp: &[u8]) -> u16 {
    let length = (udp.len() as u16).to_be_bytes();
    match !ones_complement_sum(&[&from.octets(), &to.octets(), &[0, 17], &length, udp]) {
        0 => 0xffff,
        check => check,
    }
}

/// The folded one's-complement sum of `parts`, each read as big-endian 16-bit words (an odd
/// last byte padded with 0).
fn ones_complement_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A raw IPv4 socket that sends whole hand-made packets (root here).
pub struct RawSender(std::os::fd::OwnedFd);

impl RawSender {
    /// A raw socket in the calling thread's network namespace.
    pub fn new() -> RawSender {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned by the OwnedFd below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(
            fd >= 0,
            "raw socket (needs root): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor nobody else owns.
        RawSender(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// Sends `packet`, a whole IPv4 packet, towards `to`'s address.
    pub fn send(&self, packet: &[u8], to: SocketAddr) {
        use std::os::fd::AsRawFd;
        let SocketAddr::V4(to) = to else {
            panic!("IPv4 only")
        };
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and the address are valid for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&address as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            packet.len() as isize,
            "raw send: {}",
            std::io::Error::last_os_error()
        );
    }
}
