//! Relay sockets: binding a port from the configured range, and ports held back by EVEN-PORT.
//!
//! The kernel arbitrates ports: a bind that fails with "address in use" means another worker,
//! another allocation or another program has it, so no table of ports is shared between workers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::PortRange;
use crate::turn::{PortRequest, RelayOpenError, ReservationToken};

/// How long a port held back for a RESERVATION-TOKEN waits to be claimed (RFC 8656 §7.2).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Random probes before falling back to a scan of the whole range.
const RANDOM_PROBES: usize = 32;

/// Ports held for RESERVATION-TOKENs. Shared by the workers (a client's second Allocate may land
/// on another worker); touched only by Allocate requests, never by relayed packets.
#[derive(Default)]
pub struct Reservations {
    held: Mutex<HashMap<ReservationToken, (Bound, Instant)>>,
}

/// A relay socket, non-blocking, with the address it is bound to (known from the bind, so no
/// `getsockname` is needed).
#[derive(Debug)]
pub struct Bound {
    pub socket: UdpSocket,
    pub local: SocketAddr,
}

impl Reservations {
    fn hold(&self, token: ReservationToken, socket: Bound, now: Instant) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, (_, at)| now.saturating_duration_since(*at) < RESERVATION_LIFETIME);
        held.insert(token, (socket, now));
    }

    fn take(&self, token: ReservationToken, now: Instant) -> Option<Bound> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (socket, at) = held.remove(&token)?;
        (now.saturating_duration_since(at) < RESERVATION_LIFETIME).then_some(socket)
    }

    /// Releases held ports whose time is up.
    pub fn expire(&self, now: Instant) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, (_, at)| now.saturating_duration_since(*at) < RESERVATION_LIFETIME);
    }

    /// Number of ports held.
    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no port is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Binds a relay socket on `ip` with a port from `range` as `request` asks.
pub fn open(
    ip: IpAddr,
    range: PortRange,
    request: PortRequest,
    reservations: &Reservations,
    now: Instant,
) -> Result<Bound, RelayOpenError> {
    let socket = match request {
        PortRequest::Any => bind_one(ip, range, |_| true),
        PortRequest::Even => bind_one(ip, range, |p| p % 2 == 0),
        PortRequest::EvenReserveNext(token) => {
            let next_in_range = |p: u16| p % 2 == 0 && p < range.last;
            let pair = bind_in_range(range, next_in_range, |port| {
                let even = bind(ip, port).ok()?;
                let odd = bind(ip, port + 1).ok()?;
                Some((even, odd))
            });
            pair.map(|(even, odd)| {
                reservations.hold(token, odd, now);
                even
            })
        }
        PortRequest::Reserved(token) => {
            return reservations
                .take(token, now)
                .ok_or(RelayOpenError::BadToken);
        }
    };
    socket.ok_or(RelayOpenError::NoPort)
}

/// Tries random ports, then every port from a random offset, calling `try_bind` on those that
/// `eligible` accepts, until one binds.
fn bind_in_range<T>(
    range: PortRange,
    eligible: impl Fn(u16) -> bool,
    mut try_bind: impl FnMut(u16) -> Option<T>,
) -> Option<T> {
    let size = u32::from(range.last) - u32::from(range.first) + 1;
    let mut rng = rand::rng();
    for _ in 0..RANDOM_PROBES.min(size as usize) {
        let port = range.first + rng.random_range(0..size) as u16;
        if eligible(port)
            && let Some(bound) = try_bind(port)
        {
            return Some(bound);
        }
    }
    let offset = rng.random_range(0..size);
    (0..size)
        .map(|i| range.first + ((offset + i) % size) as u16)
        .filter(|&port| eligible(port))
        .find_map(try_bind)
}

/// One socket bound to an `eligible` port of `range`. A bind that fails leaves the socket
/// unbound, so the next port is tried with the same socket: a range mostly taken (by other
/// allocations or another program) costs one `bind` per port tried, not a `socket`, a `bind`
/// and a `close`. Returns `None` when no port could be had (or no socket made).
fn bind_one(ip: IpAddr, range: PortRange, eligible: impl Fn(u16) -> bool) -> Option<Bound> {
    let mut spare: Option<socket2::Socket> = None;
    bind_in_range(range, eligible, |port| {
        let socket = match spare.take() {
            Some(socket) => socket,
            None => new_socket(ip).ok()?,
        };
        let addr = SocketAddr::new(ip, port);
        match socket.bind(&addr.into()) {
            Ok(()) => Some(Bound {
                socket: socket.into(),
                local: addr,
            }),
            Err(_) => {
                spare = Some(socket);
                None
            }
        }
    })
}

/// A non-blocking UDP socket for `ip`'s family (IPv6 only for IPv6).
fn new_socket(ip: IpAddr) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(SocketAddr::new(ip, 0));
    // Non-blocking from the start (SOCK_NONBLOCK): no fcntl calls per allocation.
    let kind = socket2::Type::from(libc::SOCK_DGRAM | libc::SOCK_NONBLOCK);
    let socket = socket2::Socket::new(domain, kind, Some(socket2::Protocol::UDP))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn bind(ip: IpAddr, port: u16) -> io::Result<Bound> {
    let socket = new_socket(ip)?;
    let addr = SocketAddr::new(ip, port);
    socket.bind(&addr.into())?;
    Ok(Bound {
        socket: socket.into(),
        local: addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A small range of free ports on loopback, found by binding a probe socket.
    fn small_range(len: u16) -> PortRange {
        for _ in 0..100 {
            let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
            let first = probe.local_addr().unwrap().port() & !1;
            drop(probe);
            if !(1024..=65_000).contains(&first) {
                continue;
            }
            let free = (first..first + len).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
            if free {
                return PortRange {
                    first,
                    last: first + len - 1,
                };
            }
        }
        panic!("no free port range on loopback");
    }

    #[test]
    fn exhausting_the_range_reports_no_port_and_ports_come_back() {
        let range = small_range(4);
        let reservations = Reservations::default();
        let now = Instant::now();
        let mut held: Vec<_> = (0..4)
            .map(|_| open(LOOPBACK, range, PortRequest::Any, &reservations, now).unwrap())
            .collect();
        let mut ports: Vec<_> = held.iter().map(|b| b.local.port()).collect();
        for bound in &held {
            assert_eq!(bound.socket.local_addr().unwrap(), bound.local);
            // Non-blocking: a read with nothing queued returns at once.
            let read = bound.socket.recv(&mut [0u8; 16]);
            assert_eq!(read.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        }
        ports.sort();
        assert_eq!(ports, (range.first..=range.last).collect::<Vec<_>>());
        assert_eq!(
            open(LOOPBACK, range, PortRequest::Any, &reservations, now).err(),
            Some(RelayOpenError::NoPort)
        );
        held.pop();
        assert!(open(LOOPBACK, range, PortRequest::Any, &reservations, now).is_ok());
    }

    #[test]
    fn a_range_taken_but_for_one_port_gives_that_port() {
        let range = small_range(64);
        let free = range.first + 37;
        // Another program holds every other port of the range.
        let others: Vec<UdpSocket> = (range.first..=range.last)
            .filter(|&p| p != free)
            .map(|p| UdpSocket::bind(("127.0.0.1", p)).unwrap())
            .collect();
        let reservations = Reservations::default();
        let fds_before = open_descriptors();
        let bound = open(
            LOOPBACK,
            range,
            PortRequest::Any,
            &reservations,
            Instant::now(),
        )
        .expect("the one free port");
        assert_eq!(bound.local.port(), free);
        // Exactly one more descriptor: the failed binds reused one socket and the search
        // leaked none.
        assert_eq!(open_descriptors(), fds_before + 1);
        drop(bound);
        assert_eq!(open_descriptors(), fds_before);
        // Even: the free port is odd here, so no even port is to be had.
        assert_eq!(
            open(
                LOOPBACK,
                range,
                PortRequest::Even,
                &reservations,
                Instant::now()
            )
            .err(),
            Some(RelayOpenError::NoPort)
        );
        assert_eq!(open_descriptors(), fds_before, "the spare socket is closed");
        drop(others);
    }

    fn open_descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn even_port_with_reservation_holds_the_next_port_for_30_seconds() {
        let range = small_range(4);
        let reservations = Reservations::default();
        let now = Instant::now();
        let token = ReservationToken([5; 8]);
        let even = open(
            LOOPBACK,
            range,
            PortRequest::EvenReserveNext(token),
            &reservations,
            now,
        )
        .unwrap();
        let port = even.local.port();
        assert_eq!(port % 2, 0);
        assert_eq!(reservations.len(), 1);
        let odd = open(
            LOOPBACK,
            range,
            PortRequest::Reserved(token),
            &reservations,
            now,
        )
        .unwrap();
        assert_eq!(odd.local.port(), port + 1);
        assert_eq!(odd.socket.local_addr().unwrap(), odd.local);
        assert_eq!(
            open(
                LOOPBACK,
                range,
                PortRequest::Reserved(token),
                &reservations,
                now
            )
            .err(),
            Some(RelayOpenError::BadToken)
        );

        let token = ReservationToken([6; 8]);
        drop(open(
            LOOPBACK,
            range,
            PortRequest::EvenReserveNext(token),
            &reservations,
            now,
        ));
        let late = now + RESERVATION_LIFETIME;
        assert_eq!(
            open(
                LOOPBACK,
                range,
                PortRequest::Reserved(token),
                &reservations,
                late
            )
            .err(),
            Some(RelayOpenError::BadToken)
        );
        reservations.expire(late);
        assert!(reservations.is_empty());
    }
}
