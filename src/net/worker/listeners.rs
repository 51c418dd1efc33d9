//! A worker's listener sockets: UDP ones it reads in batches, TCP/TLS ones it accepts on, and
//! those a reload adds or removes.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::config::Transport;
use crate::turn::FiveTuple;

use super::super::socket::normalize;
use super::{MAX_DATAGRAM, Shared, Worker};

/// Datagrams handled per wake-up of a listener socket before yielding to other tasks.
const WORK_LIMIT: usize = 64;

/// Receive buffers per UDP listener, filled by one `recvmmsg`.
const BATCH: usize = 16;

/// A UDP listener socket of this worker.
pub(in crate::net) struct UdpListener {
    pub local: SocketAddr,
    /// Registered for input only: output goes straight to the non-blocking socket, and a
    /// registration for output would wake the worker each time a sent datagram frees buffer.
    pub socket: Rc<AsyncFd<std::net::UdpSocket>>,
    pub state: quinn_udp::UdpSocketState,
    /// The receive loop, stopped when the listener is removed by a reload.
    pub task: Option<tokio::task::AbortHandle>,
}

impl UdpListener {
    /// Wraps a bound socket for this worker's runtime.
    pub fn new(socket: std::net::UdpSocket) -> std::io::Result<UdpListener> {
        let local = socket.local_addr()?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        socket.set_nonblocking(true)?;
        // SAFETY: the socket is owned by the AsyncFd and never replaced: its descriptor stays
        // open and the same for the AsyncFd's whole life.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(UdpListener {
            local,
            socket: Rc::new(socket),
            state,
            task: None,
        })
    }
}

impl Worker {
    /// Starts receiving on a UDP listener of this worker.
    pub(super) fn add_udp(shared: &Shared, socket: std::net::UdpSocket) {
        let listener = match UdpListener::new(socket) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "UDP listener setup failed");
                return;
            }
        };
        let index = {
            let mut worker = shared.borrow_mut();
            worker.udp.push(Some(listener));
            worker.udp.len() - 1
        };
        let task = tokio::task::spawn_local(udp_listener_loop(shared.clone(), index));
        if let Some(Some(listener)) = shared.borrow_mut().udp.get_mut(index) {
            listener.task = Some(task.abort_handle());
        }
    }

    /// Stops a listener (connections already accepted go on).
    pub(super) fn remove_listener(&mut self, transport: Transport, address: SocketAddr) {
        match transport {
            Transport::Udp => {
                for slot in &mut self.udp {
                    if slot.as_ref().is_some_and(|l| l.local == address)
                        && let Some(listener) = slot.take()
                        && let Some(task) = listener.task
                    {
                        task.abort();
                    }
                }
            }
            Transport::Tcp | Transport::Tls => {
                self.tcp.retain(|(t, local, task)| {
                    let gone = *t == transport && *local == address;
                    if gone {
                        task.abort();
                    }
                    !gone
                });
            }
        }
    }
}

/// The UDP listener a client's 5-tuple arrived on.
pub(super) fn listener_for<'a>(
    udp: &'a [Option<UdpListener>],
    tuple: &FiveTuple,
) -> Option<&'a UdpListener> {
    udp.iter().flatten().find(|l| serves(l.local, tuple.server))
}

/// Does a listener bound to `local` serve packets addressed to `server`?
fn serves(local: SocketAddr, server: SocketAddr) -> bool {
    local.port() == server.port() && (local.ip().is_unspecified() || local.ip() == server.ip())
}

pub(super) async fn udp_listener_loop(shared: Shared, index: usize) {
    let (socket, segment) = {
        let worker = shared.borrow();
        let Some(Some(listener)) = worker.udp.get(index) else {
            return;
        };
        let segments = listener.state.gro_segments().max(1);
        (listener.socket.clone(), (segments * 1500).max(MAX_DATAGRAM))
    };
    // Allocated once; with GRO one buffer may hold several datagrams of `stride` bytes.
    let mut bufs: [Vec<u8>; BATCH] = std::array::from_fn(|_| vec![0u8; segment]);
    let mut metas = [quinn_udp::RecvMeta::default(); BATCH];
    loop {
        let Ok(mut guard) = socket.readable().await else {
            return;
        };
        let mut drained = false;
        {
            // The audit lines of a batch of Allocates and Refreshes go out in one write.
            let _lines = crate::logbuf::Hold::begin();
            let mut worker = shared.borrow_mut();
            for _ in 0..WORK_LIMIT.div_ceil(BATCH) {
                let received = {
                    let Some(Some(listener)) = worker.udp.get(index) else {
                        return;
                    };
                    let mut slices = bufs.each_mut().map(|b| IoSliceMut::new(b));
                    listener.state.recv(
                        quinn_udp::UdpSockRef::from(socket.get_ref()),
                        &mut slices,
                        &mut metas,
                    )
                };
                let count = match received {
                    Ok(count) => count,
                    Err(error) => {
                        // WouldBlock: drained. As in `drain_relay`, quinn-udp does not set
                        // IP_RECVERR unless asked to, so a client's ICMP bounce never shows
                        // here; another error is reported once, and the datagrams behind it
                        // are read on the next turn.
                        drained = error.kind() == std::io::ErrorKind::WouldBlock;
                        break;
                    }
                };
                let now = Instant::now();
                let Some(Some(listener)) = worker.udp.get(index) else {
                    return;
                };
                let local = listener.local;
                for (meta, buf) in metas.iter().zip(&bufs).take(count) {
                    let server = SocketAddr::new(meta.dst_ip.unwrap_or(local.ip()), local.port());
                    let tuple = FiveTuple {
                        transport: Transport::Udp,
                        client: normalize(meta.addr),
                        server: normalize(server),
                    };
                    let stride = meta.stride.max(1);
                    for datagram in buf[..meta.len].chunks(stride) {
                        worker.handle_client(now, tuple, datagram);
                    }
                }
                if count < BATCH {
                    // The kernel had no more when it stopped; a datagram arriving since is
                    // a new edge, so no extra read is needed to learn it would block.
                    drained = true;
                    break;
                }
            }
            worker.flush_to_peers();
        }
        if drained {
            guard.clear_ready();
        } else {
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}
