//! One worker: a single-threaded tokio runtime that owns a protocol core, its UDP listener
//! sockets (SO_REUSEPORT siblings of the other workers'), its stream connections and the relay
//! sockets of its allocations. Nothing here is shared with other workers.

use std::cell::{Cell, RefCell};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::config::{PortRange, Transport};
use crate::stun::Class;
use crate::turn::{
    AllocationId, ClientAction, Event, FiveTuple, PEER_HEADROOM, PEER_TAILROOM, PeerAction, Server,
    Traffic,
};

use super::batch::{Datagrams, Inbox, RECV_BATCH};
use super::normalize;
use super::offload::{self, FastPath, SlotCounters};
use super::poller::{self, RelayPoller};
use super::relay::{self, Reservations};
use super::stream::{Pushed, StreamWriter};

/// Datagrams handled per wake-up of a listener socket before yielding to other tasks.
const WORK_LIMIT: usize = 64;
/// Datagrams read from one relay socket per pass over the ready ones: a hot allocation
/// yields to the others after this many, and is served again in the next pass.
const RELAY_SOCKET_LIMIT: usize = 64;
/// Datagrams read from all relay sockets per pass before yielding to the listeners.
const RELAY_PASS_LIMIT: usize = 1024;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Receive buffers per UDP listener, filled by one `recvmmsg`.
const BATCH: usize = 16;
/// Size of the buffer replies are written into.
const REPLY_BUF: usize = 2048;
/// The largest payload the kernel relays: what `Server::handle_peer` relays from a peer.
const MAX_OFFLOAD_PAYLOAD: u16 = 65_000;
/// The kernel's per-allocation counters are added to the core's figures every this many
/// publications (and whenever the figures are asked for, and when the allocation ends).
const CREDIT_EVERY: u32 = 10;

/// An allocation some of whose channels the kernel relays.
struct Offloaded {
    slot: u32,
    channels: Vec<offload::Channel>,
    /// What of the slot's counters the core's figures already include.
    credited: SlotCounters,
}

/// A UDP listener socket of this worker.
pub(super) struct UdpListener {
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

/// A listener socket handed to a worker by a reload.
#[derive(Debug)]
pub enum NewListener {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener, bool),
}

/// A relay socket, in the worker's [`RelayPoller`] under its allocation's slot index.
struct RelaySocket {
    allocation: AllocationId,
    socket: std::net::UdpSocket,
    /// In the worker's backlog: it is put there once, however often it hits its limit.
    backlogged: bool,
}

/// How often a worker publishes its counters.
pub const PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// What a worker gets from the node besides its core and sockets.
pub struct Context {
    /// This worker's index among the node's workers.
    pub index: usize,
    /// How allocation log lines show users and addresses.
    pub redactor: super::audit::Redactor,
    pub relay: RelaySettings,
    pub streams: Arc<super::StreamLimits>,
    pub published: Arc<std::sync::Mutex<super::WorkerCounters>>,
    pub commands: tokio::sync::mpsc::UnboundedReceiver<super::Command>,
    /// Where lease requests go (with `[redis]`).
    pub cluster: Option<tokio::sync::mpsc::UnboundedSender<super::cluster::LeaseRequest>>,
    /// The kernel fast path, when active (shared by the workers; its tables are written on
    /// the control path only).
    pub fast_path: Option<Arc<super::offload::FastPath>>,
}

/// Where relay sockets bind.
#[derive(Clone)]
pub struct RelaySettings {
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    pub ports: PortRange,
    pub reservations: Arc<Reservations>,
}

/// The worker's state, shared by its tasks on one thread.
pub(super) struct Worker {
    pub core: Server,
    relay: RelaySettings,
    pub streams_limits: Arc<super::StreamLimits>,
    published: Arc<std::sync::Mutex<super::WorkerCounters>>,
    /// Taken by the command loop when the worker starts.
    commands: Option<tokio::sync::mpsc::UnboundedReceiver<super::Command>>,
    index: usize,
    redactor: super::audit::Redactor,
    cluster: Option<tokio::sync::mpsc::UnboundedSender<super::cluster::LeaseRequest>>,
    pub tcp_rejected: u64,
    pub tcp_rejected_per_source: u64,
    pub stream_timeouts: u64,
    pub stream_write_timeouts: u64,
    /// Relayed frames dropped at a full stream queue (cells: counted where the worker is only
    /// borrowed).
    dropped_stream_full: Cell<u64>,
    /// Datagrams the kernel refused to send.
    dropped_send_failed: Cell<u64>,
    /// UDP listeners by index (the receive loops hold their index); `None` once removed.
    udp: Vec<Option<UdpListener>>,
    /// TCP/TLS accept loops.
    tcp: Vec<(Transport, SocketAddr, tokio::task::AbortHandle)>,
    tls: super::stream::SharedAcceptor,
    relays: Vec<Option<RelaySocket>>,
    /// The readiness set of the relay sockets, served by one task.
    poller: Rc<RelayPoller>,
    events: Vec<libc::epoll_event>,
    /// Relay sockets that hit [`RELAY_SOCKET_LIMIT`] in a pass and still hold datagrams: the
    /// set does not report them again until a new one arrives, so the next pass serves them
    /// first. Two lists whose capacity is kept, swapped each pass.
    backlog: Vec<AllocationId>,
    backlog_next: Vec<AllocationId>,
    /// Payloads for peers gathered from the datagrams of one wake-up.
    to_peers: Datagrams,
    /// Relayed frames for UDP clients gathered during one pass over the relay sockets.
    to_clients: Datagrams,
    /// Receive buffers of the relay sockets.
    inbox: Inbox,
    pub streams: foldhash::HashMap<FiveTuple, Rc<StreamWriter>>,
    out: Vec<u8>,
    /// Replies written while handling events (Allocate answers once the relay is open).
    event_out: Vec<u8>,
    timer: Rc<Notify>,
    this: std::rc::Weak<RefCell<Worker>>,
    /// The kernel fast path, when active.
    fast_path: Option<Arc<FastPath>>,
    /// Allocations with channels in the kernel's tables (control path only).
    offloaded: foldhash::HashMap<AllocationId, Offloaded>,
    publications: u32,
}

pub(super) type Shared = Rc<RefCell<Worker>>;

impl Worker {
    /// A worker; within the runtime that will run it (its relay poller registers there).
    pub fn new(
        core: Server,
        context: Context,
        udp: Vec<UdpListener>,
        tls: super::stream::SharedAcceptor,
    ) -> std::io::Result<Shared> {
        let poller = Rc::new(RelayPoller::new()?);
        // GSO is a property of the kernel (and of the path, which `Datagrams` learns from a
        // refusal); ask it on a listener socket when there is one.
        let gso = udp.first().map_or(1, |l| l.state.max_gso_segments());
        Ok(Rc::new_cyclic(|this| {
            RefCell::new(Worker {
                core,
                relay: context.relay,
                streams_limits: context.streams,
                published: context.published,
                commands: Some(context.commands),
                index: context.index,
                redactor: context.redactor,
                cluster: context.cluster,
                tcp_rejected: 0,
                tcp_rejected_per_source: 0,
                stream_timeouts: 0,
                stream_write_timeouts: 0,
                dropped_stream_full: Cell::new(0),
                dropped_send_failed: Cell::new(0),
                udp: udp.into_iter().map(Some).collect(),
                tcp: Vec::new(),
                tls,
                relays: Vec::new(),
                poller,
                events: poller::event_buffer(),
                backlog: Vec::new(),
                backlog_next: Vec::new(),
                to_peers: Datagrams::new(gso),
                to_clients: Datagrams::new(gso),
                inbox: Inbox::new(PEER_HEADROOM, MAX_DATAGRAM, PEER_TAILROOM),
                streams: foldhash::HashMap::default(),
                out: vec![0; REPLY_BUF],
                event_out: vec![0; REPLY_BUF],
                timer: Rc::new(Notify::new()),
                this: this.clone(),
                fast_path: context.fast_path,
                offloaded: foldhash::HashMap::default(),
                publications: 0,
            })
        }))
    }

    /// Starts the worker's UDP receive loops and its timer; stream listeners are started by
    /// the caller.
    pub fn start(shared: &Shared) {
        let (count, timer, commands, poller) = {
            let mut worker = shared.borrow_mut();
            (
                worker.udp.len(),
                worker.timer.clone(),
                worker.commands.take(),
                worker.poller.clone(),
            )
        };
        tokio::task::spawn_local(relay_loop(shared.clone(), poller));
        for index in 0..count {
            let task = tokio::task::spawn_local(udp_listener_loop(shared.clone(), index));
            if let Some(Some(listener)) = shared.borrow_mut().udp.get_mut(index) {
                listener.task = Some(task.abort_handle());
            }
        }
        tokio::task::spawn_local(timer_loop(shared.clone(), timer));
        if let Some(commands) = commands {
            tokio::task::spawn_local(command_loop(shared.clone(), commands));
        }
    }

    /// Starts accepting on a TCP/TLS listener of this worker.
    pub fn add_tcp(shared: &Shared, listener: std::net::TcpListener, tls: bool) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "TCP listener setup failed");
                return;
            }
        };
        let Ok(local) = listener.local_addr() else {
            return;
        };
        let acceptor = tls.then(|| shared.borrow().tls.clone());
        let task = tokio::task::spawn_local(super::stream::accept_loop(
            shared.clone(),
            listener,
            acceptor,
        ));
        let transport = if tls { Transport::Tls } else { Transport::Tcp };
        shared
            .borrow_mut()
            .tcp
            .push((transport, local, task.abort_handle()));
    }

    /// Starts receiving on a UDP listener of this worker.
    fn add_udp(shared: &Shared, socket: std::net::UdpSocket) {
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
    fn remove_listener(&mut self, transport: Transport, address: SocketAddr) {
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

    /// Carries out a command from outside the packet path.
    fn command(&mut self, command: super::Command) {
        let now = Instant::now();
        match command {
            super::Command::Revoke(usernames) => {
                let closed = self.core.revoke(&usernames);
                if closed > 0 {
                    tracing::info!(closed, "closed allocations of revoked credentials");
                }
            }
            super::Command::Draining(draining) => self.core.set_draining(draining),
            super::Command::Alternates(alternates) => self.core.set_alternates(alternates),
            super::Command::Lease {
                allocation,
                granted,
            } => self.lease_answered(allocation, granted),
            super::Command::Reconfigure(reconfiguration) => {
                let change = (*reconfiguration).clone();
                let realm = change.core.realm.clone();
                let ended = self
                    .core
                    .reconfigure(now, change.core, change.policy, change.nonces);
                log_refused_peers_ended(ended);
                self.relay.ports = change.ports;
                self.redactor = super::audit::Redactor::new(change.redact, &realm);
            }
            super::Command::HostAddresses(host) => {
                let ended = self.core.set_host_addresses(now, host);
                log_refused_peers_ended(ended);
            }
            super::Command::AddListener(handoff) => {
                let taken = handoff.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let (Some(listener), Some(shared)) = (taken, self.this.upgrade()) {
                    // Spawned: the new loops borrow the worker, which this call holds.
                    tokio::task::spawn_local(async move {
                        match listener {
                            NewListener::Udp(socket) => Worker::add_udp(&shared, socket),
                            NewListener::Tcp(listener, tls) => {
                                Worker::add_tcp(&shared, listener, tls)
                            }
                        }
                    });
                }
            }
            super::Command::RemoveListener(transport, address) => {
                self.remove_listener(transport, address);
            }
            super::Command::Close { allocation, reply } => {
                // Only an allocation the list shows (one with a relay socket) is closed, and
                // only while the operator still waits for the answer: one who got a 503
                // (this worker answered too late) has been told it was not done.
                let listed = !reply.is_closed()
                    && self
                        .core
                        .allocation(allocation)
                        .is_some_and(|a| a.relayed.is_some());
                let closed = listed && self.core.close(allocation);
                if closed {
                    tracing::info!(allocation = %allocation, "allocation closed by the operator");
                }
                // Answered once its end is carried out (logged, relay socket closed).
                self.after_core_call(now);
                let _ = reply.send(closed);
                return;
            }
            // Questions: answered from the state as it is, after everything sent before them.
            // One whose asker has given up is not worked on.
            super::Command::Counters(reply) => {
                self.credit_offloaded();
                let _ = reply.send(self.counters());
                return;
            }
            super::Command::Summary { users, reply } => {
                if !reply.is_closed() {
                    self.credit_offloaded();
                    let summary =
                        super::status::WorkerSummary::of(&self.core, self.counters(), users);
                    let _ = reply.send(summary);
                }
                return;
            }
            super::Command::Allocations { request, reply } => {
                if !reply.is_closed() {
                    self.credit_offloaded();
                    let page = super::status::WorkerPage::of(self.index, &self.core, &request);
                    let _ = reply.send(page);
                }
                return;
            }
        }
        self.after_core_call(now);
    }

    /// Handles one message from a client and does what the core says. Payloads for peers are
    /// queued: the caller ends its batch of messages with [`Worker::flush_to_peers`].
    pub fn handle_client(&mut self, now: Instant, tuple: FiveTuple, data: &[u8]) {
        if !self.to_peers.is_empty() && !carries_relayed_data(data) {
            // A request may end an allocation and close its relay socket: what was queued
            // for it goes out first.
            self.flush_to_peers();
        }
        let action = self.core.handle_client(now, tuple, data, &mut self.out);
        match action {
            ClientAction::None => {}
            ClientAction::Reply(n) => {
                // Events first: a Refresh that deletes must have released its relay port
                // before the client hears so, or its next Allocate could find the port taken.
                // (Relay sockets close synchronously, so it has once the events are done.)
                self.after_core_call(now);
                let out = std::mem::take(&mut self.out);
                self.send_to_client(&tuple, &out[..n]);
                self.out = out;
                return;
            }
            ClientAction::Relay {
                allocation,
                peer,
                payload,
            } => {
                if let Some(Some(relay)) = self.relays.get(allocation.index()) {
                    let socket = relay.socket.as_raw_fd();
                    let payload = &data[payload];
                    if !self.to_peers.push(socket, peer, None, payload) {
                        self.flush_to_peers();
                        if !self.to_peers.push(socket, peer, None, payload) {
                            // Larger than the queue takes (it takes any UDP payload).
                            increment(&self.dropped_send_failed);
                        }
                    }
                }
            }
        }
        self.after_core_call(now);
    }

    /// Sends the payloads queued for peers (one `sendmmsg` per relay socket); what the kernel
    /// refuses is counted in `dropped_send_failed`.
    pub fn flush_to_peers(&mut self) {
        if self.to_peers.is_empty() {
            return;
        }
        let flushed = self.to_peers.flush();
        add(&self.dropped_send_failed, flushed.dropped);
    }

    /// Sends the frames queued for UDP clients (one `sendmmsg` per listener socket).
    fn flush_to_clients(&mut self) {
        if self.to_clients.is_empty() {
            return;
        }
        let flushed = self.to_clients.flush();
        add(&self.dropped_send_failed, flushed.dropped);
    }

    /// A stream connection ended.
    pub fn connection_closed(&mut self, now: Instant, tuple: &FiveTuple) {
        self.streams.remove(tuple);
        self.core.handle_connection_closed(tuple);
        self.after_core_call(now);
    }

    fn after_core_call(&mut self, now: Instant) {
        while let Some(event) = self.core.poll_event() {
            match event {
                Event::OpenRelay {
                    allocation,
                    family,
                    port,
                } => {
                    let ip = match family {
                        crate::turn::Family::V4 => self.relay.v4,
                        crate::turn::Family::V6 => self.relay.v6,
                    };
                    let result = ip
                        .ok_or(crate::turn::RelayOpenError::NoPort)
                        .and_then(|ip| {
                            relay::open(ip, self.relay.ports, port, &self.relay.reservations, now)
                        })
                        .and_then(|bound| self.install_relay(allocation, bound));
                    let opened = result.is_ok();
                    let mut out = std::mem::take(&mut self.event_out);
                    if let Some((tuple, n)) = self
                        .core
                        .handle_relay_opened(now, allocation, result, &mut out)
                    {
                        self.send_to_client(&tuple, &out[..n]);
                    }
                    self.event_out = out;
                    if opened {
                        super::audit::created(&self.redactor, self.index, &self.core, allocation);
                    }
                }
                Event::AcquireLease {
                    allocation,
                    user,
                    limit,
                } => {
                    let request = super::cluster::LeaseRequest::Acquire {
                        worker: self.index,
                        allocation,
                        user,
                        limit,
                    };
                    let sent = self
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.send(request).is_ok());
                    if !sent {
                        // No cluster to ask: the node-local quota already held.
                        self.lease_answered(allocation, true);
                    }
                }
                Event::Ended(mut ended) => {
                    self.end_offload(&mut ended);
                    super::audit::ended(&self.redactor, self.index, &ended, now);
                }
                Event::Offload {
                    allocation,
                    channel,
                    client,
                    peer,
                } => self.offload(allocation, channel, client, peer),
                Event::Unoffload {
                    allocation,
                    channel,
                    peer,
                    ..
                } => self.unoffload(allocation, channel, peer),
                Event::ReleaseLease { allocation, .. } => self.release_lease(allocation),
                Event::CloseRelay { allocation } => {
                    // Nothing queued may name a descriptor that is closed (and maybe reused).
                    self.flush_to_peers();
                    if let Some(slot) = self.relays.get_mut(allocation.index()) {
                        // Closed here, which also takes it out of the set (nothing else holds
                        // the descriptor): the port is free before anything else happens.
                        drop(slot.take());
                    }
                }
            }
        }
        if self.core.take_new_deadline() {
            self.timer.notify_one();
        }
    }

    fn install_relay(
        &mut self,
        allocation: AllocationId,
        bound: relay::Bound,
    ) -> Result<SocketAddr, crate::turn::RelayOpenError> {
        let failed = |error: std::io::Error| {
            tracing::warn!(%error, "relay socket setup failed");
            crate::turn::RelayOpenError::NoPort
        };
        // Non-blocking already, and its address known: `relay::open` binds it so.
        let relay::Bound { socket, local } = bound;
        let index = allocation.index();
        if self.relays.len() <= index {
            self.relays.resize_with(index + 1, || None);
        }
        if self.relays[index].is_some() {
            // Closing the old socket (which takes it out of the set) must not leave a queued
            // datagram naming its descriptor.
            self.flush_to_peers();
            self.relays[index] = None;
        }
        self.poller
            .add(socket.as_raw_fd(), index as u64)
            .map_err(failed)?;
        self.relays[index] = Some(RelaySocket {
            allocation,
            socket,
            backlogged: false,
        });
        Ok(local)
    }

    /// Sends an answer to a client; drops it (counted) if the socket is full.
    fn send_to_client(&self, tuple: &FiveTuple, frame: &[u8]) {
        self.transmit(tuple, frame, false);
    }

    fn transmit(&self, tuple: &FiveTuple, frame: &[u8], relayed: bool) {
        match tuple.transport {
            Transport::Udp => {
                let Some(listener) = listener_for(&self.udp, tuple) else {
                    return;
                };
                let transmit = quinn_udp::Transmit {
                    destination: tuple.client,
                    ecn: None,
                    contents: frame,
                    segment_size: None,
                    // On a wildcard listener, answer from the address the request came to.
                    src_ip: listener
                        .local
                        .ip()
                        .is_unspecified()
                        .then_some(tuple.server.ip()),
                };
                // Straight to the non-blocking socket, not through tokio's readiness (the
                // listener is registered for input only); a full buffer drops the datagram.
                let sent = listener.state.try_send(
                    quinn_udp::UdpSockRef::from(listener.socket.get_ref()),
                    &transmit,
                );
                if sent.is_err() {
                    increment(&self.dropped_send_failed);
                }
            }
            Transport::Tcp | Transport::Tls => {
                if let Some(writer) = self.streams.get(tuple) {
                    let pushed = if relayed {
                        writer.push_relayed(frame)
                    } else {
                        writer.push_answer(frame)
                    };
                    if pushed == Pushed::Full {
                        increment(&self.dropped_stream_full);
                    }
                }
            }
        }
    }

    /// Gives a lease back to the cluster.
    fn release_lease(&self, allocation: AllocationId) {
        if let Some(cluster) = &self.cluster {
            let _ = cluster.send(super::cluster::LeaseRequest::Release {
                worker: self.index,
                allocation,
            });
        }
    }

    /// The cluster's answer to a lease request: the Allocate goes on, or gets 486.
    fn lease_answered(&mut self, allocation: AllocationId, granted: bool) {
        if granted && self.core.allocation(allocation).is_none() {
            // The allocation ended while its lease was asked for (e.g. its TCP client left):
            // nobody would give the lease back, and the node would renew it forever.
            self.release_lease(allocation);
            return;
        }
        let mut out = std::mem::take(&mut self.event_out);
        if let Some((tuple, n)) = self.core.handle_lease(allocation, granted, &mut out) {
            self.send_to_client(&tuple, &out[..n]);
        }
        self.event_out = out;
    }

    /// Writes a channel the core says the kernel may relay into the kernel's tables, with
    /// where the routing table sends each direction now. Only IPv4 is carried there so far
    /// ([`offload::carries`]); another channel, no route the program can follow, a full table
    /// or no free counter slot leave it in user space, which relays it as before.
    fn offload(
        &mut self,
        allocation: AllocationId,
        number: u16,
        client: FiveTuple,
        peer: SocketAddr,
    ) {
        let Some(fast_path) = &self.fast_path else {
            return;
        };
        let Some(relay) = self.core.allocation(allocation).and_then(|a| a.relayed) else {
            return;
        };
        if !offload::carries(client.client, client.server, relay, peer) {
            // IPv6: user space relays it.
            return;
        }
        let slot = match self.offloaded.get(&allocation) {
            Some(entry) => entry.slot,
            None => {
                let Some(slot) = fast_path.acquire_slot() else {
                    tracing::debug!(allocation = %allocation, "no free fast path counter slot: relaying in user space");
                    return;
                };
                self.offloaded.insert(
                    allocation,
                    Offloaded {
                        slot,
                        channels: Vec::new(),
                        credited: SlotCounters::default(),
                    },
                );
                slot
            }
        };
        let channel = offload::Channel {
            client: client.client,
            listener: client.server,
            channel: number,
            relay,
            peer,
            slot,
            max_payload: MAX_OFFLOAD_PAYLOAD,
        };
        match fast_path.install(&channel) {
            Ok(()) => {
                if let Some(entry) = self.offloaded.get_mut(&allocation) {
                    entry.channels.retain(|c| c.channel != number);
                    entry.channels.push(channel);
                }
            }
            Err(why) => {
                tracing::warn!(allocation = %allocation, reason = %why, "channel not offloaded: relaying it in user space");
            }
        }
    }

    /// Takes a channel out of the kernel's tables: from now on only user space decides.
    fn unoffload(&mut self, allocation: AllocationId, number: u16, peer: SocketAddr) {
        let (Some(fast_path), Some(entry)) = (&self.fast_path, self.offloaded.get_mut(&allocation))
        else {
            return;
        };
        entry.channels.retain(|channel| {
            let gone = channel.channel == number && channel.peer == peer;
            if gone && let Err(why) = fast_path.remove(channel) {
                // The entry may still relay: nothing else can be done about it here, but it
                // must be known.
                tracing::error!(allocation = %allocation, reason = %why, "cannot remove a channel from the kernel's tables");
            }
            !gone
        });
    }

    /// An allocation ended: whatever the kernel still holds for it goes, its last counts join
    /// its log line and the node's figures, and its counter slot is freed.
    fn end_offload(&mut self, ended: &mut crate::turn::Ended) {
        let (Some(fast_path), Some(entry)) =
            (&self.fast_path, self.offloaded.remove(&ended.allocation))
        else {
            return;
        };
        for channel in &entry.channels {
            let _ = fast_path.remove(channel);
        }
        if let Ok(counted) = fast_path.counters(entry.slot) {
            let delta = traffic_since(counted, entry.credited);
            self.core.credit_offloaded(None, delta);
            ended.traffic.to_peer_packets += delta.to_peer_packets;
            ended.traffic.to_peer_bytes += delta.to_peer_bytes;
            ended.traffic.to_client_packets += delta.to_client_packets;
            ended.traffic.to_client_bytes += delta.to_client_bytes;
        }
        fast_path.release_slot(entry.slot);
    }

    /// Adds what the kernel relayed since the last call to the allocations' and the core's
    /// figures. One map read per offloaded allocation (control path).
    fn credit_offloaded(&mut self) {
        let Some(fast_path) = &self.fast_path else {
            return;
        };
        for (&allocation, entry) in &mut self.offloaded {
            if let Ok(counted) = fast_path.counters(entry.slot) {
                let delta = traffic_since(counted, entry.credited);
                entry.credited = counted;
                self.core.credit_offloaded(Some(allocation), delta);
            }
        }
    }

    /// Makes the counters visible to the rest of the process (for what samples them: rates,
    /// the cluster registry). Constant work, whatever the number of allocations: anything about
    /// the allocations themselves is copied out only when asked for (see `command`), except
    /// the kernel's counts of offloaded allocations, read every [`CREDIT_EVERY`] times.
    fn publish(&mut self) {
        self.publications = self.publications.wrapping_add(1);
        if self.publications % CREDIT_EVERY == 0 {
            self.credit_offloaded();
        }
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = self.counters();
    }

    /// This worker's counters now.
    fn counters(&self) -> super::WorkerCounters {
        super::WorkerCounters {
            core: self.core.stats(),
            allocations: self.core.allocation_count() as u64,
            tcp_rejected: self.tcp_rejected,
            tcp_rejected_per_source: self.tcp_rejected_per_source,
            stream_timeouts: self.stream_timeouts,
            stream_write_timeouts: self.stream_write_timeouts,
            dropped_stream_full: self.dropped_stream_full.get(),
            dropped_send_failed: self.dropped_send_failed.get(),
        }
    }

    /// Serves the relay sockets that are readable: those left over from the last pass
    /// first, then those the set reports; each up to [`RELAY_SOCKET_LIMIT`] datagrams, all up
    /// to [`RELAY_PASS_LIMIT`]. The frames for UDP clients go out together at the end. Returns
    /// whether work is left for another pass (the set may hold more, or a socket hit its
    /// limit); `false` means every socket was read until it had no more. A socket is in the
    /// backlog at most once, so the backlog never holds more than the worker's relay sockets.
    fn relay_pass(&mut self) -> bool {
        let now = Instant::now();
        let mut budget = RELAY_PASS_LIMIT;
        std::mem::swap(&mut self.backlog, &mut self.backlog_next);
        let mut i = 0;
        while i < self.backlog_next.len() {
            let allocation = self.backlog_next[i];
            i += 1;
            match self.relays.get_mut(allocation.index()) {
                Some(Some(relay)) if relay.allocation == allocation => relay.backlogged = false,
                // Closed since: nothing to read.
                _ => continue,
            }
            if budget == 0 {
                self.defer(allocation);
                continue;
            }
            let (more, taken) = self.drain_relay(now, allocation, budget);
            budget -= taken;
            if more {
                self.defer(allocation);
            }
        }
        self.backlog_next.clear();
        let poller = self.poller.clone();
        let ready = poller.ready(&mut self.events);
        for i in 0..ready {
            let index = self.events[i].u64 as usize;
            let Some(Some(relay)) = self.relays.get(index) else {
                continue;
            };
            let allocation = relay.allocation;
            if budget == 0 {
                // Not read: the set will not report it again, the backlog remembers it.
                self.defer(allocation);
                continue;
            }
            let (more, taken) = self.drain_relay(now, allocation, budget);
            budget -= taken;
            if more {
                self.defer(allocation);
            }
        }
        self.flush_to_clients();
        ready == poller::MAX_EVENTS || !self.backlog.is_empty()
    }

    /// Puts a relay socket in the backlog for the next pass, unless it is there already.
    fn defer(&mut self, allocation: AllocationId) {
        if let Some(Some(relay)) = self.relays.get_mut(allocation.index())
            && relay.allocation == allocation
            && !relay.backlogged
        {
            relay.backlogged = true;
            self.backlog.push(allocation);
        }
    }

    /// Reads a relay socket, up to [`RELAY_SOCKET_LIMIT`] and `budget` datagrams, and forwards
    /// what it read. Returns whether it may hold more, and how many datagrams it read.
    fn drain_relay(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        budget: usize,
    ) -> (bool, usize) {
        let Some(Some(relay)) = self.relays.get(allocation.index()) else {
            return (false, 0);
        };
        if relay.allocation != allocation {
            return (false, 0);
        }
        let socket = relay.socket.as_raw_fd();
        let limit = RELAY_SOCKET_LIMIT.min(budget);
        let mut taken = 0;
        while taken < limit {
            let count = match self.inbox.recv(socket) {
                Ok(count) => count,
                // WouldBlock: drained. Another error is reported once (the kernel clears it);
                // the datagrams behind it raise a new event. ICMP errors (ECONNREFUSED from a
                // dead peer port) never show here: Linux reports them only to connected or
                // IP_RECVERR sockets, and relay sockets are neither (tests/faults.rs).
                Err(_) => return (false, taken),
            };
            for i in 0..count {
                let (source, buf, payload) = self.inbox.datagram(i);
                let Some(peer) = source else {
                    continue;
                };
                let action = self.core.handle_peer(now, allocation, peer, buf, payload);
                if let PeerAction::Forward { to, frame } = action {
                    forward_to_client(
                        &self.udp,
                        &self.streams,
                        &mut self.to_clients,
                        (&self.dropped_send_failed, &self.dropped_stream_full),
                        &to,
                        &buf[frame],
                    );
                }
            }
            taken += count;
            if count < RECV_BATCH {
                // The socket had no more when the kernel stopped: a datagram arriving after
                // that is a new edge, which the set reports.
                return (false, taken);
            }
        }
        (true, taken)
    }
}

/// Whether a client's message is relayed data (ChannelData or a Send indication), which
/// changes no state that datagrams queued for peers depend on.
fn carries_relayed_data(data: &[u8]) -> bool {
    match data.first() {
        Some(0x40..=0x7f) => true,
        Some(_) => crate::stun::message_class(data) == Some(Class::Indication),
        None => true,
    }
}

/// The UDP listener a client's 5-tuple arrived on.
fn listener_for<'a>(udp: &'a [Option<UdpListener>], tuple: &FiveTuple) -> Option<&'a UdpListener> {
    udp.iter().flatten().find(|l| serves(l.local, tuple.server))
}

/// Queues a relayed frame for a UDP client (sent when the pass ends) or pushes it to a stream
/// client's queue; what cannot be sent is dropped and counted.
fn forward_to_client(
    udp: &[Option<UdpListener>],
    streams: &foldhash::HashMap<FiveTuple, Rc<StreamWriter>>,
    to_clients: &mut Datagrams,
    (send_failed, stream_full): (&Cell<u64>, &Cell<u64>),
    tuple: &FiveTuple,
    frame: &[u8],
) {
    match tuple.transport {
        Transport::Udp => {
            let Some(listener) = listener_for(udp, tuple) else {
                return;
            };
            let socket = listener.socket.get_ref().as_raw_fd();
            // On a wildcard listener, send from the address the client talks to.
            let src_ip = listener
                .local
                .ip()
                .is_unspecified()
                .then_some(tuple.server.ip());
            if !to_clients.push(socket, tuple.client, src_ip, frame) {
                let flushed = to_clients.flush();
                add(send_failed, flushed.dropped);
                if !to_clients.push(socket, tuple.client, src_ip, frame) {
                    increment(send_failed);
                }
            }
        }
        Transport::Tcp | Transport::Tls => {
            if let Some(writer) = streams.get(tuple)
                && writer.push_relayed(frame) == Pushed::Full
            {
                increment(stream_full);
            }
        }
    }
}

/// Logs the permissions and channel bindings a policy change ended (nothing when none did).
fn log_refused_peers_ended(ended: usize) {
    if ended > 0 {
        tracing::info!(
            ended,
            "permissions and channels ended: the peer policy now refuses their peer"
        );
    }
}

/// What the kernel counted beyond what was already credited.
fn traffic_since(counted: SlotCounters, credited: SlotCounters) -> Traffic {
    Traffic {
        to_peer_packets: counted
            .to_peer_packets
            .saturating_sub(credited.to_peer_packets),
        to_peer_bytes: counted.to_peer_bytes.saturating_sub(credited.to_peer_bytes),
        to_client_packets: counted
            .to_client_packets
            .saturating_sub(credited.to_client_packets),
        to_client_bytes: counted
            .to_client_bytes
            .saturating_sub(credited.to_client_bytes),
    }
}

fn increment(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

fn add(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}

/// Does a listener bound to `local` serve packets addressed to `server`?
fn serves(local: SocketAddr, server: SocketAddr) -> bool {
    local.port() == server.port() && (local.ip().is_unspecified() || local.ip() == server.ip())
}

async fn udp_listener_loop(shared: Shared, index: usize) {
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

/// Serves the worker's relay sockets: one wake-up per batch of readiness, whatever the
/// number of sockets.
async fn relay_loop(shared: Shared, poller: Rc<RelayPoller>) {
    loop {
        let Ok(mut guard) = poller.readable().await else {
            return;
        };
        let more = shared.borrow_mut().relay_pass();
        if more {
            drop(guard);
            tokio::task::yield_now().await;
        } else {
            // Everything reported was read until empty; a later arrival is a new edge.
            guard.clear_ready();
        }
    }
}

async fn command_loop(
    shared: Shared,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<super::Command>,
) {
    while let Some(command) = commands.recv().await {
        if command.is_question() {
            // Let the sockets that are readable now have their turn first: a yielded task
            // runs again only after the runtime has polled its I/O driver and run the tasks
            // that woke. So what had reached the worker's sockets when the question came (up
            // to one pass's work limit per socket) is counted in the answer.
            tokio::task::yield_now().await;
        }
        shared.borrow_mut().command(command);
    }
}

async fn timer_loop(shared: Shared, notify: Rc<Notify>) {
    let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = shared.borrow().core.poll_timeout();
        // Far enough to mean "no deadline"; the publish tick wakes the loop anyway.
        let deadline =
            next.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = notify.notified() => continue,
            _ = publish.tick() => {
                let mut worker = shared.borrow_mut();
                worker.publish();
                // Unclaimed EVEN-PORT reservations give their port back after 30 s.
                worker.relay.reservations.expire(Instant::now());
                continue;
            }
        }
        let now = Instant::now();
        // Allocations that expire together are logged in one write.
        let _lines = crate::logbuf::Hold::begin();
        let mut worker = shared.borrow_mut();
        worker.core.handle_timeout(now);
        worker.after_core_call(now);
        worker.relay.reservations.expire(now);
    }
}
