//! One worker: a single-threaded tokio runtime that owns a protocol core, its UDP listener
//! sockets (SO_REUSEPORT siblings of the other workers'), its stream connections and the relay
//! sockets of its allocations. Nothing here is shared with other workers. This file holds the
//! worker's state and the path of a client's message through the core and back; its listeners,
//! relay sockets, commands, timers, kernel fast path and stream connections each have a file.

mod commands;
mod listeners;
mod offload;
mod relays;
mod streams;
mod tcp_relays;
mod timers;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::config::Transport;
use crate::stun::Class;
use crate::turn::{
    AllocationId, ClientAction, Event, FiveTuple, PEER_HEADROOM, PEER_TAILROOM, Server,
};

use super::audit::Redactor;
use super::batch::{Datagrams, Inbox};
use super::cluster::LeaseRequest;
use super::offload::FastPath;
use super::poller::{self, RelayPoller};
use super::relay;
use super::stream::{Pushed, SharedAcceptor, StreamCounters, StreamLimits, StreamWriter};
use super::{Command, WorkerCounters};

pub(in crate::net) use super::command::NewListener;
use commands::command_loop;
pub(in crate::net) use listeners::UdpListener;
use listeners::{listener_for, udp_listener_loop};
use offload::Offloaded;
pub use relays::RelaySettings;
use relays::{Backlogged, RelaySocket, relay_loop, relay_slot};
pub use tcp_relays::BindAnswer;
use timers::timer_loop;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Size of the buffer replies are written into.
const REPLY_BUF: usize = 2048;

/// What a worker gets from the node besides its core and sockets.
pub struct Context {
    /// This worker's index among the node's workers.
    pub index: usize,
    /// How allocation log lines show users and addresses.
    pub redactor: Redactor,
    pub relay: RelaySettings,
    pub streams: Arc<StreamLimits>,
    pub published: Arc<std::sync::Mutex<WorkerCounters>>,
    pub commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    /// Every worker's command channel, by index (this one's too).
    pub peers: Arc<[tokio::sync::mpsc::UnboundedSender<Command>]>,
    /// Where lease requests go (with `[redis]`).
    pub cluster: Option<tokio::sync::mpsc::UnboundedSender<LeaseRequest>>,
    /// The kernel fast path, when active (shared by the workers; its tables are written on
    /// the control path only).
    pub fast_path: Option<Arc<FastPath>>,
}

/// The worker's state, shared by its tasks on one thread.
pub(super) struct Worker {
    core: Server,
    relay: RelaySettings,
    stream_limits: Arc<StreamLimits>,
    published: Arc<std::sync::Mutex<WorkerCounters>>,
    /// Taken by the command loop when the worker starts.
    commands: Option<tokio::sync::mpsc::UnboundedReceiver<Command>>,
    index: usize,
    redactor: Redactor,
    cluster: Option<tokio::sync::mpsc::UnboundedSender<LeaseRequest>>,
    /// What the stream connections count (refusals, timeouts).
    stream_counters: Rc<StreamCounters>,
    /// Relayed frames dropped at a full stream queue (cells: counted where the worker is only
    /// borrowed).
    dropped_stream_full: Cell<u64>,
    /// Datagrams the kernel refused to send.
    dropped_send_failed: Cell<u64>,
    /// UDP listeners by index (the receive loops hold their index); `None` once removed.
    udp: Vec<Option<UdpListener>>,
    /// TCP/TLS accept loops.
    tcp: Vec<(Transport, SocketAddr, tokio::task::AbortHandle)>,
    tls: SharedAcceptor,
    relays: Vec<Option<RelaySocket>>,
    /// The readiness set of the relay sockets, served by one task.
    poller: Rc<RelayPoller>,
    events: Vec<libc::epoll_event>,
    /// Relay sockets that hit [`RELAY_SOCKET_LIMIT`] in a pass and still hold datagrams: the
    /// set does not report them again until a new one arrives, so the next pass serves them
    /// first. Two lists whose capacity is kept, swapped each pass.
    backlog: Vec<Backlogged>,
    backlog_next: Vec<Backlogged>,
    /// Payloads for peers gathered from the datagrams of one wake-up.
    to_peers: Datagrams,
    /// Relayed frames for UDP clients gathered during one pass over the relay sockets.
    to_clients: Datagrams,
    /// Receive buffers of the relay sockets.
    inbox: Inbox,
    /// The writers of the stream connections, registered by [`StreamHost::opened`].
    streams: foldhash::HashMap<FiveTuple, Rc<StreamWriter>>,
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
    /// Every worker's command channel, by index.
    peers: Arc<[tokio::sync::mpsc::UnboundedSender<Command>]>,
    /// TCP allocations' sockets and peer connections (RFC 6062).
    tcp_relays: tcp_relays::TcpRelays,
    /// Stream connections whose ConnectionBind is being answered.
    handovers: foldhash::HashMap<FiveTuple, super::stream::Handover>,
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
                stream_limits: context.streams,
                published: context.published,
                commands: Some(context.commands),
                index: context.index,
                redactor: context.redactor,
                cluster: context.cluster,
                stream_counters: Rc::new(StreamCounters::default()),
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
                peers: context.peers,
                tcp_relays: tcp_relays::TcpRelays::default(),
                handovers: foldhash::HashMap::default(),
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

    /// Handles one message from a client and does what the core says. Payloads for peers are
    /// queued: the caller ends its batch of messages with [`Worker::flush_to_peers`].
    pub(super) fn handle_client(&mut self, now: Instant, tuple: FiveTuple, data: &[u8]) {
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
                if let Some(socket) = self.relay_socket(allocation, &peer) {
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
            ClientAction::BindConnection {
                connection,
                username,
                key,
                tid,
            } => self.start_bind(tuple, connection, username, key, tid),
        }
        self.after_core_call(now);
    }

    /// Sends the payloads queued for peers (one `sendmmsg` per relay socket); what the kernel
    /// refuses is counted in `dropped_send_failed`.
    pub(super) fn flush_to_peers(&mut self) {
        if self.to_peers.is_empty() {
            return;
        }
        let flushed = self.to_peers.flush();
        add(&self.dropped_send_failed, flushed.dropped);
    }

    /// Sends the frames queued for UDP clients (one `sendmmsg` per listener socket).
    pub(super) fn flush_to_clients(&mut self) {
        if self.to_clients.is_empty() {
            return;
        }
        let flushed = self.to_clients.flush();
        add(&self.dropped_send_failed, flushed.dropped);
    }

    pub(super) fn after_core_call(&mut self, now: Instant) {
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
                        .and_then(|bound| self.install_relay(allocation, family, bound));
                    self.relay_opened(now, allocation, result);
                }
                Event::OpenTcpRelay { allocation, family } => {
                    let result = self.open_tcp_relay(allocation, family);
                    self.relay_opened(now, allocation, result);
                }
                Event::Connect {
                    allocation,
                    connection,
                    peer,
                } => self.start_connect(now, allocation, connection, peer),
                Event::CloseConnection { connection, .. } => self.close_connection(connection),
                Event::AcquireLease {
                    allocation,
                    user,
                    limit,
                } => {
                    let request = LeaseRequest::Acquire {
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
                    if let Some(spliced) = self.tcp_traffic(ended.allocation) {
                        ended.traffic += spliced;
                    }
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
                    self.close_tcp_relay(allocation);
                    // Nothing queued may name a descriptor that is closed (and maybe reused).
                    self.flush_to_peers();
                    for family in [crate::turn::Family::V4, crate::turn::Family::V6] {
                        if let Some(slot) = self.relays.get_mut(relay_slot(allocation, family)) {
                            // Closed here, which also takes it out of the set (nothing else
                            // holds the descriptor): the port is free before anything else
                            // happens.
                            drop(slot.take());
                        }
                    }
                }
            }
        }
        if self.core.take_new_deadline() {
            self.timer.notify_one();
        }
    }

    /// Tells the core how opening an allocation's relay went, sends the Allocate's answer, and
    /// logs the allocation once it is granted.
    fn relay_opened(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        result: Result<SocketAddr, crate::turn::RelayOpenError>,
    ) {
        let mut out = std::mem::take(&mut self.event_out);
        if let Some((tuple, n)) = self
            .core
            .handle_relay_opened(now, allocation, result, &mut out)
        {
            self.send_to_client(&tuple, &out[..n]);
        }
        self.event_out = out;
        // Granted once answered: a dual allocation's first socket waits for its second (the
        // core asks for it in the next event).
        let granted = self
            .core
            .allocation(allocation)
            .is_some_and(|a| a.relayed().is_some());
        if granted {
            super::audit::created(&self.redactor, self.index, &self.core, allocation);
        }
    }

    /// Sends an answer to a client; drops it (counted) if the socket is full.
    pub(super) fn send_to_client(&self, tuple: &FiveTuple, frame: &[u8]) {
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

fn increment(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

fn add(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}
