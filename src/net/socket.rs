//! Binding the listener sockets (one per worker on the same address, SO_REUSEPORT) and
//! the one form a client's address takes whatever socket reported it.

use std::net::SocketAddr;

/// IPv4-mapped addresses (from sockets that accept both families) become plain IPv4, so a
/// client has one 5-tuple whatever the socket reported.
pub(super) fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// A UDP socket bound to `address`, non-blocking, with room for bursts.
pub(super) fn bind_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = new_socket(address, socket2::Type::DGRAM)?;
    // Room for bursts: the kernel default drops packets under load.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// A TCP listener bound to `address`, non-blocking.
pub(super) fn bind_tcp(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = new_socket(address, socket2::Type::STREAM)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A non-blocking socket for `address` that shares its port with the other workers'.
fn new_socket(address: SocketAddr, kind: socket2::Type) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), kind, None)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Each worker binds its own socket to the same address; the kernel spreads clients over
    // them by a hash of the 4-tuple, so a client always reaches the same worker.
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
