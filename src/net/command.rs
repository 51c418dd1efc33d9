//! Talking to the workers from outside the packet path: the [`Command`]s a worker takes, the
//! [`Commander`] that sends them, and waiting for their answers with a deadline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::Transport;
use crate::turn::{CoreConfig, HostAddresses, Nonces, PeerPolicy};

use super::counters::WorkerCounters;
use super::status;

/// Settings a reload hands to every worker.
#[derive(Clone)]
pub struct Reconfiguration {
    pub core: CoreConfig,
    pub policy: PeerPolicy,
    pub nonces: Nonces,
    pub ports: crate::config::PortRange,
    pub redact: bool,
}

impl std::fmt::Debug for Reconfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconfiguration")
            .field("core", &self.core)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// A listener socket handed to a worker by a reload.
#[derive(Debug)]
pub enum NewListener {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener, bool),
}

/// Something a worker must do, sent from outside the packet path. A command that needs an
/// answer carries its reply channel; the worker answers once it has done everything it was
/// given before.
#[derive(Debug)]
pub enum Command {
    /// Close the allocations made with these usernames (revoked credentials).
    Revoke(Arc<[String]>),
    /// Close this allocation now (an operator's request); the reply says whether it was live
    /// with a relay (an allocation the list shows).
    Close {
        allocation: crate::turn::AllocationId,
        reply: oneshot::Sender<bool>,
    },
    /// Take a reloaded configuration.
    Reconfigure(Arc<Reconfiguration>),
    /// The addresses of this host's interfaces changed: here is the new set.
    HostAddresses(HostAddresses),
    /// Start serving a listener a reload added (this worker's own socket of it).
    AddListener(Arc<Mutex<Option<NewListener>>>),
    /// Stop a listener a reload removed.
    RemoveListener(Transport, SocketAddr),
    /// Start or end draining (see [`Server::set_draining`](crate::turn::Server::set_draining)).
    Draining(bool),
    /// The other live nodes changed (see [`Server::set_alternates`](crate::turn::Server::set_alternates)).
    Alternates(Arc<[crate::turn::Alternate]>),
    /// The cluster's answer to a lease request.
    Lease {
        allocation: crate::turn::AllocationId,
        granted: bool,
    },
    /// Hand the pending peer connection `connection` (RFC 6062) over to a data connection on
    /// another worker (or this one) whose ConnectionBind authenticated as `username` / `key`.
    BindConnection {
        connection: crate::turn::ConnectionId,
        username: Box<str>,
        key: crate::turn::credentials::Signing,
        reply: oneshot::Sender<super::worker::BindAnswer>,
    },
    /// A spliced TCP connection of one of this worker's allocations ended.
    TcpConnectionClosed(crate::turn::ConnectionId),
    /// Reply with the worker's counters as they are now.
    Counters(oneshot::Sender<WorkerCounters>),
    /// Reply with the counters and a count of the allocations (user ids too when `users`).
    Summary {
        users: bool,
        reply: oneshot::Sender<status::WorkerSummary>,
    },
    /// Reply with a page of the allocations.
    Allocations {
        request: Arc<status::PageRequest>,
        reply: oneshot::Sender<status::WorkerPage>,
    },
}

impl Command {
    /// Whether this asks for an answer about the worker's state (and changes nothing).
    pub(super) fn is_question(&self) -> bool {
        matches!(
            self,
            Command::Counters(_) | Command::Summary { .. } | Command::Allocations { .. }
        )
    }
}

/// How long the rest of the process waits for a worker's answer before giving up on it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Workers that did not answer a request in time (stuck, or stopped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker{} {} did not answer within {} s", if .workers.len() == 1 { "" } else { "s" }, list(.workers), ANSWER_TIMEOUT.as_secs())]
pub struct Unanswered {
    /// Their indices.
    pub workers: Vec<usize>,
}

fn list(workers: &[usize]) -> String {
    let names: Vec<String> = workers.iter().map(usize::to_string).collect();
    names.join(", ")
}

/// Sends commands to every worker of a node; cheap to clone.
#[derive(Clone)]
pub struct Commander {
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Command>>,
}

impl Commander {
    /// Sends to these workers' command channels, in worker order.
    pub(super) fn new(workers: Vec<tokio::sync::mpsc::UnboundedSender<Command>>) -> Commander {
        Commander { workers }
    }

    /// Tells every worker, each its own `command()`; a worker that has stopped is skipped.
    pub fn broadcast(&self, command: impl Fn() -> Command) {
        for worker in &self.workers {
            let _ = worker.send(command());
        }
    }

    /// Tells one worker.
    pub fn send_to(&self, worker: usize, command: Command) {
        if let Some(sender) = self.workers.get(worker) {
            let _ = sender.send(command);
        }
    }

    /// Closes the allocations of revoked usernames on every worker.
    pub fn revoke(&self, usernames: Vec<String>) {
        let usernames: Arc<[String]> = usernames.into();
        self.broadcast(|| Command::Revoke(usernames.clone()));
    }

    /// Asks each of `workers` with the command `ask` builds around a reply channel, and waits
    /// for their answers until `deadline`: each answer, or `None` for a worker that did not
    /// answer in time or has stopped.
    pub(super) async fn ask<T>(
        &self,
        workers: impl Iterator<Item = usize>,
        ask: impl Fn(oneshot::Sender<T>) -> Command,
        deadline: tokio::time::Instant,
    ) -> Vec<(usize, Option<T>)> {
        let mut waiting = Vec::new();
        for worker in workers {
            let (reply, answer) = oneshot::channel();
            let sent = self
                .workers
                .get(worker)
                .is_some_and(|sender| sender.send(ask(reply)).is_ok());
            waiting.push((worker, sent.then_some(answer)));
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for (worker, answer) in waiting {
            let answer = match answer {
                Some(answer) => tokio::time::timeout_at(deadline, answer)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            answers.push((worker, answer));
        }
        answers
    }
}

/// The answers of every worker asked, or which did not answer.
pub(super) fn all_answered<T>(answers: Vec<(usize, Option<T>)>) -> Result<Vec<T>, Unanswered> {
    let workers: Vec<usize> = answers
        .iter()
        .filter(|(_, answer)| answer.is_none())
        .map(|(worker, _)| *worker)
        .collect();
    if !workers.is_empty() {
        return Err(Unanswered { workers });
    }
    Ok(answers
        .into_iter()
        .filter_map(|(_, answer)| answer)
        .collect())
}
