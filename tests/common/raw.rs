//! Hand-made IPv4 packets for the fast-path tests: a raw socket (IP_HDRINCL, root) that sends
//! whole packets, so that a test controls what the kernel's own stack would not let it write
//! (IP options, fragments, a wrong UDP checksum).

use std::net::SocketAddr;

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
