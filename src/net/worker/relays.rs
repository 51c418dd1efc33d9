//! A worker's relay sockets: opening one for an allocation, and reading what peers send,
//! from every ready socket in turn, with a budget per socket and per pass.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{PortRange, Transport};
use crate::turn::{AllocationId, Family, FiveTuple, PeerAction};

use super::super::batch::{Datagrams, RECV_BATCH};
use super::super::poller::{self, RelayPoller};
use super::super::relay::{self, Reservations};
use super::super::stream::{Pushed, StreamWriter};
use super::listeners::{UdpListener, listener_for};
use super::{Shared, Worker, add, increment};

/// Datagrams read from one relay socket per pass over the ready ones: a hot allocation
/// yields to the others after this many, and is served again in the next pass.
const RELAY_SOCKET_LIMIT: usize = 64;

/// Datagrams read from all relay sockets per pass before yielding to the listeners.
const RELAY_PASS_LIMIT: usize = 1024;

/// Where relay sockets bind.
#[derive(Clone)]
pub struct RelaySettings {
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    pub ports: PortRange,
    pub reservations: Arc<Reservations>,
    /// The relayed addresses of TCP allocations (RFC 6062), shared by the workers.
    pub tcp_ports: Arc<super::super::tcp_relay::TcpPorts>,
}

/// Where a relay socket sits in the worker's table, and its key in the [`RelayPoller`]: two
/// places per allocation slot, IPv4 and IPv6. A dual allocation (RFC 8656 §7.2) fills both;
/// any other, the one of its family.
pub(super) fn relay_slot(allocation: AllocationId, family: Family) -> usize {
    allocation.index() * 2 + usize::from(family == Family::V6)
}

/// A relay socket waiting in the worker's backlog: its allocation and its [`relay_slot`].
pub(super) type Backlogged = (AllocationId, usize);

/// A relay socket, in the worker's [`RelayPoller`] under its [`relay_slot`].
pub(super) struct RelaySocket {
    allocation: AllocationId,
    socket: std::net::UdpSocket,
    /// In the worker's backlog: it is put there once, however often it hits its limit.
    backlogged: bool,
}

impl Worker {
    /// The descriptor of `allocation`'s relay socket that reaches `peer` (of its family), if
    /// one is open.
    #[inline]
    pub(super) fn relay_socket(
        &self,
        allocation: AllocationId,
        peer: &SocketAddr,
    ) -> Option<RawFd> {
        let family = if peer.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        match self.relays.get(relay_slot(allocation, family)) {
            Some(Some(relay)) => Some(relay.socket.as_raw_fd()),
            _ => None,
        }
    }

    pub(super) fn install_relay(
        &mut self,
        allocation: AllocationId,
        family: Family,
        bound: relay::Bound,
    ) -> Result<SocketAddr, crate::turn::RelayOpenError> {
        let failed = |error: std::io::Error| {
            tracing::warn!(%error, "relay socket setup failed");
            crate::turn::RelayOpenError::NoPort
        };
        // Non-blocking already, and its address known: `relay::open` binds it so.
        let relay::Bound { socket, local } = bound;
        let index = relay_slot(allocation, family);
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

    /// Serves the relay sockets that are readable: those left over from the last pass
    /// first, then those the set reports; each up to [`RELAY_SOCKET_LIMIT`] datagrams, all up
    /// to [`RELAY_PASS_LIMIT`]. The frames for UDP clients go out together at the end. Returns
    /// whether work is left for another pass (the set may hold more, or a socket hit its
    /// limit); `false` means every socket was read until it had no more. A socket is in the
    /// backlog at most once, so the backlog never holds more than the worker's relay sockets.
    pub(super) fn relay_pass(&mut self) -> bool {
        let now = Instant::now();
        let mut budget = RELAY_PASS_LIMIT;
        std::mem::swap(&mut self.backlog, &mut self.backlog_next);
        let mut i = 0;
        while i < self.backlog_next.len() {
            let (allocation, slot) = self.backlog_next[i];
            i += 1;
            match self.relays.get_mut(slot) {
                Some(Some(relay)) if relay.allocation == allocation => relay.backlogged = false,
                // Closed since: nothing to read.
                _ => continue,
            }
            if budget == 0 {
                self.defer(allocation, slot);
                continue;
            }
            let (more, taken) = self.drain_relay(now, allocation, slot, budget);
            budget -= taken;
            if more {
                self.defer(allocation, slot);
            }
        }
        self.backlog_next.clear();
        let poller = self.poller.clone();
        let ready = poller.ready(&mut self.events);
        for i in 0..ready {
            let slot = self.events[i].u64 as usize;
            let Some(Some(relay)) = self.relays.get(slot) else {
                continue;
            };
            let allocation = relay.allocation;
            if budget == 0 {
                // Not read: the set will not report it again, the backlog remembers it.
                self.defer(allocation, slot);
                continue;
            }
            let (more, taken) = self.drain_relay(now, allocation, slot, budget);
            budget -= taken;
            if more {
                self.defer(allocation, slot);
            }
        }
        self.flush_to_clients();
        ready == poller::MAX_EVENTS || !self.backlog.is_empty()
    }

    /// Puts a relay socket in the backlog for the next pass, unless it is there already.
    fn defer(&mut self, allocation: AllocationId, slot: usize) {
        if let Some(Some(relay)) = self.relays.get_mut(slot)
            && relay.allocation == allocation
            && !relay.backlogged
        {
            relay.backlogged = true;
            self.backlog.push((allocation, slot));
        }
    }

    /// Reads a relay socket, up to [`RELAY_SOCKET_LIMIT`] and `budget` datagrams, and forwards
    /// what it read. Returns whether it may hold more, and how many datagrams it read.
    fn drain_relay(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        slot: usize,
        budget: usize,
    ) -> (bool, usize) {
        let Some(Some(relay)) = self.relays.get(slot) else {
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

/// Serves the worker's relay sockets: one wake-up per batch of readiness, whatever the
/// number of sockets.
pub(super) async fn relay_loop(shared: Shared, poller: Rc<RelayPoller>) {
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
