//! What a worker is told from outside the packet path: [`Command`]s (revocations, reloads,
//! listeners, leases, questions about its state), carried out one at a time between packets.

use std::time::Instant;

use crate::turn::AllocationId;

use super::super::Command;
use super::super::status;
use super::LeaseRequest;
use super::{NewListener, Shared, Worker};

impl Worker {
    /// Carries out a command from outside the packet path.
    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Revoke(usernames) => {
                let closed = self.core.revoke(&usernames);
                if closed > 0 {
                    tracing::info!(closed, "closed allocations of revoked credentials");
                }
            }
            Command::Draining(draining) => self.core.set_draining(draining),
            Command::Alternates(alternates) => self.core.set_alternates(alternates),
            Command::Lease {
                allocation,
                granted,
            } => self.lease_answered(allocation, granted),
            Command::Reconfigure(reconfiguration) => {
                let change = (*reconfiguration).clone();
                let realm = change.core.realm.clone();
                let ended = self
                    .core
                    .reconfigure(now, change.core, change.policy, change.nonces);
                log_refused_peers_ended(ended);
                self.relay.ports = change.ports;
                self.redactor = super::super::audit::Redactor::new(change.redact, &realm);
            }
            Command::HostAddresses(host) => {
                let ended = self.core.set_host_addresses(now, host);
                log_refused_peers_ended(ended);
            }
            Command::AddListener(handoff) => {
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
            Command::BindConnection {
                connection,
                username,
                key,
                reply,
            } => {
                let answer = self.hand_over_peer(connection, &username, &key);
                if let Err(Ok(handoff)) = reply.send(answer) {
                    // The asker gave up: the connection is not bound after all.
                    drop(handoff);
                    self.core.handle_tcp_connection_closed(connection);
                }
            }
            Command::TcpConnectionClosed(connection) => {
                self.core.handle_tcp_connection_closed(connection);
            }
            Command::RemoveListener(transport, address) => {
                self.remove_listener(transport, address);
            }
            Command::Close { allocation, reply } => {
                // Only an allocation the list shows (one with a relay socket) is closed, and
                // only while the operator still waits for the answer: one who got a 503
                // (this worker answered too late) has been told it was not done.
                let listed = !reply.is_closed()
                    && self
                        .core
                        .allocation(allocation)
                        .is_some_and(|a| a.relayed().is_some());
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
            Command::Counters(reply) => {
                self.credit_offloaded();
                let _ = reply.send(self.counters());
                return;
            }
            Command::Summary { users, reply } => {
                if !reply.is_closed() {
                    self.credit_offloaded();
                    let summary = status::WorkerSummary::of(&self.core, self.counters(), users);
                    let _ = reply.send(summary);
                }
                return;
            }
            Command::Allocations { request, reply } => {
                if !reply.is_closed() {
                    self.credit_offloaded();
                    let page = status::WorkerPage::of(self.index, &self.core, &request, |id| {
                        self.tcp_traffic(id)
                    });
                    let _ = reply.send(page);
                }
                return;
            }
        }
        self.after_core_call(now);
    }

    /// Gives a lease back to the cluster.
    pub(super) fn release_lease(&self, allocation: AllocationId) {
        if let Some(cluster) = &self.cluster {
            let _ = cluster.send(LeaseRequest::Release {
                worker: self.index,
                allocation,
            });
        }
    }

    /// The cluster's answer to a lease request: the Allocate goes on, or gets 486.
    pub(super) fn lease_answered(&mut self, allocation: AllocationId, granted: bool) {
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
}

/// Logs the permissions and channel bindings a policy change ended (nothing when none did).
pub(super) fn log_refused_peers_ended(ended: usize) {
    if ended > 0 {
        tracing::info!(
            ended,
            "permissions and channels ended: the peer policy now refuses their peer"
        );
    }
}

pub(super) async fn command_loop(
    shared: Shared,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
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
