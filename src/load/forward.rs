//! `forward` mode: a plain UDP forwarder, the reference for what a relay costs without TURN.
//! Like a TURN server it has one listening socket and one relay socket per client: a datagram
//! from a client goes out of that client's relay socket to the target (the echo peer), and a
//! datagram arriving on a relay socket goes back to its client through the listening socket.
//! One thread, one epoll set, `recvmmsg`/`sendmmsg` on every socket, and the datagrams towards
//! clients collected over one wake-up and sent in one `sendmmsg`.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::report::{CpuSample, Report, round};
use super::stats::Failures;
use super::sys::{self, Batch, Epoll};

/// Datagrams per system call.
const BATCH: usize = 64;
/// The listening socket's epoll token; relay sockets use their index.
const LISTENER: u64 = u64::MAX;
const SOCKET_BUFFER: usize = 4 << 20;

/// A `forward` run, as the command line asked for it (already checked).
#[derive(Clone, Debug)]
pub struct ForwardPlan {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub duration: Duration,
    /// Clients beyond this many are dropped (each takes a descriptor).
    pub max_sources: usize,
}

struct Relay {
    socket: UdpSocket,
    client: SocketAddr,
}

/// Binds the listening socket: the forwarder, ready to [`Forwarder::run`].
pub struct Forwarder {
    plan: ForwardPlan,
    listener: UdpSocket,
}

impl Forwarder {
    pub fn bind(plan: &ForwardPlan) -> io::Result<Forwarder> {
        let listener = UdpSocket::bind(plan.listen)?;
        listener.set_nonblocking(true)?;
        sys::set_buffer_sizes(listener.as_raw_fd(), SOCKET_BUFFER);
        Ok(Forwarder {
            plan: plan.clone(),
            listener,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Forwards until the duration has passed or SIGINT/SIGTERM: the report.
    pub fn run(self) -> io::Result<Report> {
        let plan = &self.plan;
        let listen_fd = self.listener.as_raw_fd();
        let epoll = Epoll::new()?;
        epoll.add(listen_fd, LISTENER)?;
        let mut events = sys::epoll_events(256);
        let mut relays: Vec<Relay> = Vec::new();
        let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
        // Client → target: received with addresses, sent on relay sockets without.
        let mut up = Batch::new(BATCH, 0x1_0000);
        // Target → client: received on relay sockets, sent on the listener with addresses.
        let mut down = Batch::new(BATCH, 0x1_0000);
        let mut queued = 0;
        let (mut forwarded_up, mut forwarded_down, mut dropped) = (0u64, 0u64, 0u64);
        let mut failures = Failures::default();

        let cpu_start = CpuSample::take(None);
        let start = Instant::now();
        let end = start + plan.duration;
        while Instant::now() < end && !sys::stop_requested() {
            let timeout = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let ready = epoll.wait(&mut events, timeout)?;
            for event in &events[..ready] {
                let token = event.u64;
                if token == LISTENER {
                    // Every datagram waiting from clients, out of their relay sockets.
                    loop {
                        let n = match up.recv(listen_fd, 0..BATCH, true) {
                            Ok(n) => n,
                            Err(e) => {
                                failures.add(&format!("recv_{}", super::stats::io_cause(&e)));
                                0
                            }
                        };
                        let mut first = 0;
                        while first < n {
                            let Some(client) = up.name(first) else {
                                dropped += 1;
                                first += 1;
                                continue;
                            };
                            // A run of datagrams from one client goes out in one sendmmsg.
                            let mut last = first + 1;
                            while last < n && up.name(last) == Some(client) {
                                last += 1;
                            }
                            let relay = match by_client.get(&client) {
                                Some(&relay) => Some(relay),
                                None if relays.len() < plan.max_sources => {
                                    match open_relay(plan.target, &epoll, relays.len()) {
                                        Ok(socket) => {
                                            by_client.insert(client, relays.len());
                                            relays.push(Relay { socket, client });
                                            Some(relays.len() - 1)
                                        }
                                        Err(e) => {
                                            failures.add(&format!(
                                                "relay_socket_{}",
                                                super::stats::io_cause(&e)
                                            ));
                                            None
                                        }
                                    }
                                }
                                None => None,
                            };
                            match relay {
                                Some(relay) => {
                                    up.resend_received(first..last);
                                    for i in first..last {
                                        up.clear_name(i);
                                    }
                                    let fd = relays[relay].socket.as_raw_fd();
                                    let sent = send_all(&mut up, fd, first..last);
                                    forwarded_up += sent as u64;
                                    dropped += (last - first - sent) as u64;
                                }
                                None => dropped += (last - first) as u64,
                            }
                            first = last;
                        }
                        if n < BATCH {
                            break;
                        }
                    }
                } else if let Some(relay) = relays.get(token as usize) {
                    // Every echo waiting on this relay socket, queued for its client.
                    let fd = relay.socket.as_raw_fd();
                    loop {
                        if queued == BATCH {
                            let sent = send_all(&mut down, listen_fd, 0..queued);
                            forwarded_down += sent as u64;
                            dropped += (queued - sent) as u64;
                            queued = 0;
                        }
                        let n = down.recv(fd, queued..BATCH, false).unwrap_or(0);
                        for i in queued..queued + n {
                            down.set_name(i, relay.client);
                        }
                        down.resend_received(queued..queued + n);
                        queued += n;
                        if n == 0 || queued < BATCH {
                            break;
                        }
                    }
                }
            }
            if queued > 0 {
                let sent = send_all(&mut down, listen_fd, 0..queued);
                forwarded_down += sent as u64;
                dropped += (queued - sent) as u64;
                queued = 0;
            }
        }
        let cpu_end = CpuSample::take(None);

        let mut report = Report::new("forward");
        report.listen = Some(self.local_addr()?.to_string());
        report.server = Some(plan.target.to_string());
        report.duration_s = round(start.elapsed().as_secs_f64(), 3);
        report.sources = Some(relays.len() as u64);
        report.forwarded_up = Some(forwarded_up);
        report.forwarded_down = Some(forwarded_down);
        report.dropped = Some(dropped);
        report.relayed_packets = Some(forwarded_up + forwarded_down);
        report.set_cpu(&cpu_start, &cpu_end, forwarded_up + forwarded_down, 0);
        report.set_failures(&failures);
        Ok(report)
    }
}

/// A relay socket towards `target`, watched with token `token`.
fn open_relay(target: SocketAddr, epoll: &Epoll, token: usize) -> io::Result<UdpSocket> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    epoll.add(socket.as_raw_fd(), token as u64)?;
    Ok(socket)
}

/// Sends the slots of `range`, waiting up to a millisecond at a time (5 ms in all) while the
/// socket buffer is full: how many went out. A datagram that fails is skipped.
fn send_all(batch: &mut Batch, fd: std::os::fd::RawFd, range: std::ops::Range<usize>) -> usize {
    let (mut next, mut sent) = (range.start, 0);
    let patience = Instant::now() + Duration::from_millis(5);
    while next < range.end {
        match batch.send(fd, next..range.end) {
            Ok(0) if Instant::now() < patience => {
                let mut out = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: `out` is one valid pollfd.
                unsafe { libc::poll(&mut out, 1, 1) };
            }
            Ok(0) => break,
            Ok(n) => {
                next += n;
                sent += n;
            }
            Err(_) => next += 1,
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_goes_through_a_relay_socket_per_client() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let echo =
            super::super::echo::EchoPeer::start("127.0.0.1:0".parse().unwrap(), deadline).unwrap();
        let plan = ForwardPlan {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: echo.addr(),
            duration: Duration::from_secs(2),
            max_sources: 1,
        };
        let forwarder = Forwarder::bind(&plan).unwrap();
        let addr = forwarder.local_addr().unwrap();
        let thread = std::thread::spawn(move || forwarder.run().unwrap());
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 64];
        for i in 0..5u8 {
            client.send_to(&[i; 20], addr).unwrap();
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((from, &buf[..n]), (addr, &[i; 20][..]));
        }
        // A second client is over max_sources: dropped, not answered.
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        other.send_to(b"no room", addr).unwrap();
        assert!(other.recv_from(&mut buf).is_err());
        let report = thread.join().unwrap();
        assert_eq!(report.forwarded_up, Some(5));
        assert_eq!(report.forwarded_down, Some(5));
        assert_eq!(report.sources, Some(1));
        assert_eq!(report.dropped, Some(1));
    }
}
