//! A UDP echo peer: every datagram goes back to where it came from, read and sent in batches
//! (`recvmmsg`/`sendmmsg`) on one thread. Built into `relay` and `hold`, or alone (`echo`).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sys::{self, Batch};

/// Datagrams read or sent per system call.
const BATCH: usize = 64;
/// Socket buffers asked for (the kernel may grant less).
const SOCKET_BUFFER: usize = 4 << 20;
/// How often the thread looks at the stop flag and the deadline when idle.
const IDLE_WAKE: Duration = Duration::from_millis(20);
/// How long a full send buffer may hold up the echo of one batch before the rest is dropped.
const SEND_PATIENCE: Duration = Duration::from_millis(5);

/// What the echo peer has done.
#[derive(Debug, Default)]
pub struct EchoCounters {
    pub received: AtomicU64,
    pub echoed: AtomicU64,
    /// Datagrams not echoed: the send buffer stayed full, or sending failed.
    pub dropped: AtomicU64,
    /// Datagrams larger than the receive slot (never with the generator's own sizes).
    pub truncated: AtomicU64,
}

/// A running echo peer; stopped and joined on drop.
pub struct EchoPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<EchoCounters>,
    thread: Option<JoinHandle<()>>,
}

impl EchoPeer {
    /// Binds `bind` and echoes on a thread of its own until stopped or `deadline`.
    pub fn start(bind: SocketAddr, deadline: Instant) -> io::Result<EchoPeer> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        sys::set_buffer_sizes(socket.as_raw_fd(), SOCKET_BUFFER);
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(EchoCounters::default());
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name("echo-peer".into())
                .spawn(move || echo_loop(&socket, &stop, &counters, deadline))?
        };
        Ok(EchoPeer {
            addr,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The peer a run sends to: `external` when given (and no echo peer of ours), else one
    /// started on `bind` until `deadline`.
    pub fn unless_external(
        external: Option<SocketAddr>,
        bind: SocketAddr,
        deadline: Instant,
    ) -> io::Result<(Option<EchoPeer>, SocketAddr)> {
        match external {
            Some(peer) => Ok((None, peer)),
            None => {
                let echo = EchoPeer::start(bind, deadline)?;
                let peer = echo.addr();
                Ok((Some(echo), peer))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> &EchoCounters {
        &self.counters
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn echo_loop(socket: &UdpSocket, stop: &AtomicBool, counters: &EchoCounters, deadline: Instant) {
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new(BATCH, 0x1_0000);
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SIGINT/SIGTERM do not stop it by themselves: a run that ends early still drains the
    // echoes in flight; its owner calls `stop`.
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = match batch.recv(fd, 0..BATCH, true) {
            Ok(0) => {
                // SAFETY: `poll` is one valid pollfd.
                unsafe { libc::poll(&mut poll, 1, IDLE_WAKE.as_millis() as libc::c_int) };
                continue;
            }
            Ok(n) => n,
            // An ICMP error from an earlier echo (the relay port closed): reported once.
            Err(_) => continue,
        };
        counters.received.fetch_add(n as u64, Ordering::Relaxed);
        let truncated = (0..n).filter(|&i| batch.truncated(i)).count();
        if truncated > 0 {
            counters
                .truncated
                .fetch_add(truncated as u64, Ordering::Relaxed);
        }
        batch.resend_received(0..n);
        let (mut done, mut failed) = (0, 0);
        let patience = Instant::now() + SEND_PATIENCE;
        while done < n {
            match batch.send(fd, done..n) {
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
                Ok(sent) => done += sent,
                // One destination failed (e.g. unreachable): skip that datagram.
                Err(_) => {
                    failed += 1;
                    done += 1;
                }
            }
        }
        counters
            .echoed
            .fetch_add((done - failed) as u64, Ordering::Relaxed);
        counters
            .dropped
            .fetch_add((n - done + failed) as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_come_back_to_their_sender() {
        let mut peer = EchoPeer::start(
            "127.0.0.1:0".parse().unwrap(),
            Instant::now() + Duration::from_secs(10),
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 2000];
        for size in [1, 100, 1500] {
            let sent = vec![size as u8; size];
            client.send_to(&sent, peer.addr()).unwrap();
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, peer.addr());
            assert_eq!(&buf[..n], &sent[..]);
        }
        peer.stop();
        assert_eq!(peer.counters().received.load(Ordering::Relaxed), 3);
        assert_eq!(peer.counters().echoed.load(Ordering::Relaxed), 3);
    }
}
