//! The tokio I/O shell: binds the listeners, runs one single-threaded worker per core, and
//! carries datagrams between sockets and the protocol cores. It makes no protocol decision.

mod accept;
mod audit;
pub mod batch;
pub mod cluster;
pub mod offload;
mod poller;
mod relay;
mod reload;
pub mod status;
mod stream;
mod worker;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rand::RngCore;
use tokio::sync::{oneshot, watch};

use crate::auth::{Credentials, StaticCredentials};
use crate::config::{Config, Transport};
use crate::turn::{
    AllocationLedger, CoreConfig, HostAddresses, NodeLimits, Nonces, PeerPolicy, Quota,
    ReflectionBudget, Server, SourceLimiter, Stats,
};

pub use accept::AcceptBackoff;
pub use relay::Reservations;
pub use reload::Reconfiguration;
use reload::ReloadContext;
pub use stream::tls_acceptor;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listen[{index}] ({transport} {address}): cannot bind: {source}")]
    Bind {
        index: usize,
        transport: Transport,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error(
        "relay.address is not set and no IPv4 address was found on the default-route interface; set [relay] address"
    )]
    NoRelayAddress,
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("redis.url: invalid Redis URL {0}")]
    Redis(String),
    #[error("relay.offload = \"on\" but the kernel fast path cannot run: {0}")]
    Offload(offload::Why),
}

/// A bound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundListener {
    pub transport: Transport,
    pub address: SocketAddr,
}

/// Counters of one worker as last published (every 100 ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    pub core: Stats,
    /// Live allocations.
    pub allocations: u64,
    /// TCP/TLS connections refused because `max-tcp-connections` was reached.
    pub tcp_rejected: u64,
    /// TCP/TLS connections refused because their source had `max-tcp-connections-per-source`.
    pub tcp_rejected_per_source: u64,
    /// TCP/TLS clients closed by `stream-idle-timeout`: no complete message, or a handshake
    /// not finished, in time.
    pub stream_timeouts: u64,
    /// TCP/TLS clients closed because their queued output made no progress for
    /// `stream-idle-timeout` (a client that does not read).
    pub stream_write_timeouts: u64,
    /// Relayed frames dropped because the TCP/TLS client's output queue was full.
    pub dropped_stream_full: u64,
    /// Datagrams the kernel refused to send (UDP socket buffer full), to clients or peers.
    pub dropped_send_failed: u64,
}

impl WorkerCounters {
    /// Adds `other`'s counts to these (summing workers).
    fn add(&mut self, other: &WorkerCounters) {
        self.core.add(&other.core);
        self.allocations += other.allocations;
        self.tcp_rejected += other.tcp_rejected;
        self.tcp_rejected_per_source += other.tcp_rejected_per_source;
        self.stream_timeouts += other.stream_timeouts;
        self.stream_write_timeouts += other.stream_write_timeouts;
        self.dropped_stream_full += other.dropped_stream_full;
        self.dropped_send_failed += other.dropped_send_failed;
    }
}

/// Counters of the whole node: the workers' summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub workers: WorkerCounters,
    /// Live TCP/TLS client connections.
    pub tcp_connections: u64,
    /// Datagrams the kernel fast path relayed (already in the workers' relayed counters).
    pub offload_carried: u64,
}

/// Limits the I/O layer enforces on stream clients, shared by the workers (reloadable).
pub(crate) struct StreamLimits {
    pub max_connections: AtomicU32,
    /// 0: no cap per source.
    pub max_per_source: AtomicU32,
    pub idle_timeout_ms: std::sync::atomic::AtomicU64,
    pub live: AtomicU32,
    /// Live connections by source (see [`source_of`]), counted whatever the cap, so that a
    /// reload that sets one finds the counts right. Touched at accept and close only; an entry
    /// lives while its count is above zero, so there are at most `live` of them. Keyed
    /// (SipHash): the keys are chosen by remote hosts.
    pub sources: Mutex<std::collections::HashMap<IpAddr, u32>>,
}

impl StreamLimits {
    fn new(limits: &crate::config::Limits) -> StreamLimits {
        StreamLimits {
            max_connections: AtomicU32::new(limits.max_tcp_connections),
            max_per_source: AtomicU32::new(limits.max_tcp_connections_per_source),
            idle_timeout_ms: std::sync::atomic::AtomicU64::new(
                limits.stream_idle_timeout.as_millis() as u64,
            ),
            live: AtomicU32::new(0),
            sources: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Takes the reloadable values of `limits`; connections already open stay.
    fn set(&self, limits: &crate::config::Limits) {
        self.max_connections
            .store(limits.max_tcp_connections, Ordering::Relaxed);
        self.max_per_source
            .store(limits.max_tcp_connections_per_source, Ordering::Relaxed);
        self.idle_timeout_ms.store(
            limits.stream_idle_timeout.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }
}

/// How often the addresses of this host's interfaces are enumerated again (they also are on
/// every reload): a wildcard listener is reachable on each, so each is an own socket's address.
pub const HOST_ADDRESS_REFRESH: Duration = Duration::from_secs(5);

/// The source a client's connections are counted under for `max-tcp-connections-per-source`:
/// its IPv4 address, or the /64 of its IPv6 address (a host is usually given a whole /64).
pub(crate) fn source_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The core's settings from the configuration (also how [`crate::fuzzing`] builds its core).
pub(crate) fn core_config(
    config: &Config,
    relay_v4: Option<Ipv4Addr>,
    epoch: Instant,
    unix_at_epoch: u64,
) -> CoreConfig {
    CoreConfig {
        realm: config.realm.clone(),
        software: config.software.clone(),
        default_lifetime: config.relay.default_lifetime,
        max_lifetime: config.relay.max_lifetime,
        public_v4: config.relay.public_address,
        relay_v4: relay_v4.is_some(),
        relay_v6: config.relay.address_v6.is_some(),
        allocation_bandwidth: config.limits.allocation_bandwidth.bits_per_second(),
        cluster_leases: config.redis.is_some(),
        quota: Quota {
            user_allocations: config.limits.user_allocations,
            total_allocations: config.limits.total_allocations,
            user_bandwidth: config.limits.user_bandwidth.bits_per_second(),
        },
        permissions_per_allocation: config.limits.permissions_per_allocation,
        channels_per_allocation: config.limits.channels_per_allocation,
        epoch,
        unix_at_epoch,
        offload: false,
    }
}

/// What `[relay] offload` comes to on this machine: the loaded fast path, or why not.
#[derive(Debug)]
pub enum OffloadState {
    /// `offload = "off"`.
    Off,
    /// `auto`, and the program could not load or attach.
    Unavailable(offload::Why),
    /// Loaded and attached.
    Active(Arc<offload::FastPath>),
}

impl OffloadState {
    /// Loads the fast path as `[relay] offload` says, for the UDP listeners' addresses and the
    /// relay address. `on` and a failure: the error. `auto` and a failure: `Unavailable`.
    pub fn start(
        mode: crate::config::Offload,
        listeners: &[BoundListener],
        relay_v4: Option<Ipv4Addr>,
    ) -> Result<OffloadState, offload::Why> {
        if mode == crate::config::Offload::Off {
            return Ok(OffloadState::Off);
        }
        let addresses: Vec<IpAddr> = listeners
            .iter()
            .filter(|l| l.transport == Transport::Udp)
            .map(|l| l.address.ip())
            .chain(relay_v4.map(IpAddr::V4))
            .collect();
        match offload::FastPath::load(&addresses) {
            Ok(fast_path) => Ok(OffloadState::Active(Arc::new(fast_path))),
            Err(why) if mode == crate::config::Offload::Auto => Ok(OffloadState::Unavailable(why)),
            Err(why) => Err(why),
        }
    }

    /// The fast path, when active.
    pub fn fast_path(&self) -> Option<&Arc<offload::FastPath>> {
        match self {
            OffloadState::Active(fast_path) => Some(fast_path),
            _ => None,
        }
    }
}

/// The peer policy: `[peers]`, plus this server's own sockets, which are never peers.
pub(crate) fn peer_policy(
    config: &Config,
    listeners: &[BoundListener],
    own: &[SocketAddr],
    relay_v4: Option<Ipv4Addr>,
    host: HostAddresses,
) -> PeerPolicy {
    let local_ips: Vec<IpAddr> = [
        relay_v4.map(IpAddr::V4),
        config.relay.address_v6.map(IpAddr::V6),
        config.relay.public_address.map(IpAddr::V4),
    ]
    .into_iter()
    .flatten()
    .collect();
    PeerPolicy::new(config.peers.allow.clone(), config.peers.deny.clone())
        .with_own_sockets(
            listeners
                .iter()
                .map(|l| l.address)
                .chain(own.iter().copied())
                .collect(),
            local_ips,
        )
        .with_host_addresses(host)
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
    AddListener(Arc<Mutex<Option<worker::NewListener>>>),
    /// Stop a listener a reload removed.
    RemoveListener(Transport, SocketAddr),
    /// Start or end draining (see [`Server::set_draining`]).
    Draining(bool),
    /// The other live nodes changed (see [`Server::set_alternates`]).
    Alternates(Arc<[crate::turn::Alternate]>),
    /// The cluster's answer to a lease request.
    Lease {
        allocation: crate::turn::AllocationId,
        granted: bool,
    },
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
    fn is_question(&self) -> bool {
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

/// The node's allocations counted for `/api/v1/status` and `/metrics`, and its counters, as
/// the workers answered a request.
#[derive(Debug, Clone, Default)]
pub struct NodeSummary {
    pub counters: NodeCounters,
    /// Allocations with a relay socket, by client transport in [`status::TRANSPORTS`] order.
    pub by_transport: [u64; 3],
    /// The same by relay family: IPv4, IPv6.
    pub by_family: [u64; 2],
    /// Distinct user ids among them (when asked for).
    pub users: Option<usize>,
}

impl NodeSummary {
    /// Allocations with a relay socket.
    pub fn allocations(&self) -> u64 {
        self.by_transport.iter().sum()
    }
}

/// One page of `/api/v1/allocations`.
#[derive(Debug, Clone, Default)]
pub struct AllocationPage {
    pub allocations: Vec<status::AllocationInfo>,
    /// The id to pass as the next page's cursor, when more allocations match.
    pub next_cursor: Option<String>,
}

/// Requests that make workers walk their allocations (status, metrics, the allocation list)
/// go to the workers one at a time, and a status request that waited while another was
/// answered takes that answer when it was asked for after the request came.
struct Snapshots {
    turn: tokio::sync::Semaphore,
    /// The last summary: when it was asked for, and what it said.
    last: Mutex<Option<(tokio::time::Instant, Arc<NodeSummary>)>>,
}

/// Sends commands to every worker of a node; cheap to clone.
#[derive(Clone)]
pub struct Commander {
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Command>>,
}

impl Commander {
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
    async fn ask<T>(
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
fn all_answered<T>(answers: Vec<(usize, Option<T>)>) -> Result<Vec<T>, Unanswered> {
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

/// A running server: its listeners and worker threads.
pub struct Node {
    handle: NodeHandle,
    /// The cluster side, for the caller to run on its runtime (when `[redis]` is set).
    cluster: Option<(
        cluster::Cluster,
        tokio::sync::mpsc::UnboundedReceiver<cluster::LeaseRequest>,
    )>,
    workers: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// The thread that refreshes the host addresses; it stops when the sender is dropped.
    refresher: Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>,
}

/// What the rest of the process (HTTP API, signal handling) may see and ask of a running
/// node; cheap to clone. Reads the counters workers publish, and asks the workers for
/// anything else.
#[derive(Clone)]
pub struct NodeHandle {
    commander: Commander,
    /// Changed by reloads that add or remove listeners.
    listeners: Arc<Mutex<Vec<BoundListener>>>,
    counters: Vec<Arc<Mutex<WorkerCounters>>>,
    snapshots: Arc<Snapshots>,
    streams: Arc<StreamLimits>,
    limits: Arc<NodeLimits>,
    /// Whether the node drains, as last set (the workers each hold their own copy; the
    /// cluster heartbeat publishes this one).
    draining: Arc<AtomicBool>,
    reload: Arc<ReloadContext>,
    /// The kernel fast path, when active.
    fast_path: Option<Arc<offload::FastPath>>,
}

impl NodeHandle {
    /// Whether the kernel fast path is active, and its totals since the start (what it relayed
    /// and what it left to user space, by reason).
    pub fn offload(&self) -> (bool, offload::Totals) {
        match &self.fast_path {
            Some(fast_path) => (true, fast_path.totals().unwrap_or_default()),
            None => (false, offload::Totals::default()),
        }
    }

    /// The listeners, with the ports actually bound.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's counters, as the workers last published them (at most 100 ms old): for
    /// what samples them periodically (rates, the cluster registry). What must include
    /// everything the workers have done asks them: [`NodeHandle::counters_now`].
    pub fn counters(&self) -> NodeCounters {
        let mut total = self.node_counters();
        for published in &self.counters {
            let worker = *published.lock().unwrap_or_else(|e| e.into_inner());
            total.workers.add(&worker);
        }
        total
    }

    /// The node-wide counters, without the workers' yet.
    fn node_counters(&self) -> NodeCounters {
        NodeCounters {
            tcp_connections: u64::from(self.streams.live.load(Ordering::Relaxed)),
            offload_carried: self
                .fast_path
                .as_ref()
                .map_or(0, |fast_path| fast_path.carried().unwrap_or(0)),
            ..NodeCounters::default()
        }
    }

    /// The node's counters as the workers answer now: everything each worker had done when
    /// it got the request is counted. Waits at most [`ANSWER_TIMEOUT`]; a worker that did not
    /// answer by then is named in the error, which also carries the counters with that
    /// worker's as last published.
    pub async fn counters_now(&self) -> Result<NodeCounters, (Unanswered, NodeCounters)> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let answers = self
            .commander
            .ask(0..self.counters.len(), Command::Counters, deadline)
            .await;
        let mut total = self.node_counters();
        let mut unanswered = Vec::new();
        for (worker, answer) in answers {
            let counters = answer.unwrap_or_else(|| {
                unanswered.push(worker);
                *self.counters[worker]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            });
            total.workers.add(&counters);
        }
        if unanswered.is_empty() {
            Ok(total)
        } else {
            Err((
                Unanswered {
                    workers: unanswered,
                },
                total,
            ))
        }
    }

    /// The allocations counted and the counters, as the workers answer now (for status and
    /// metrics); with the number of distinct users when `users`. Requests that walk the
    /// allocations go to the workers one at a time; one that waited for another takes that
    /// other's answer when it was asked for after this one came. Waits at most
    /// [`ANSWER_TIMEOUT`] in all.
    pub async fn summary(&self, users: bool) -> Result<Arc<NodeSummary>, Unanswered> {
        let came = tokio::time::Instant::now();
        let deadline = came + ANSWER_TIMEOUT;
        let workers = || Unanswered {
            workers: (0..self.counters.len()).collect(),
        };
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.snapshots.turn.acquire()).await
        else {
            return Err(workers());
        };
        if let Some((asked, summary)) = &*self
            .snapshots
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            && *asked >= came
            && (summary.users.is_some() || !users)
        {
            return Ok(summary.clone());
        }
        let asked = tokio::time::Instant::now();
        let answers = self
            .commander
            .ask(
                0..self.counters.len(),
                |reply| Command::Summary { users, reply },
                deadline,
            )
            .await;
        let mut summary = NodeSummary {
            counters: self.node_counters(),
            ..NodeSummary::default()
        };
        let mut all_users: Vec<Box<str>> = Vec::new();
        for worker in all_answered(answers)? {
            summary.counters.workers.add(&worker.counters);
            for (total, count) in summary.by_transport.iter_mut().zip(worker.by_transport) {
                *total += count;
            }
            for (total, count) in summary.by_family.iter_mut().zip(worker.by_family) {
                *total += count;
            }
            all_users.extend(worker.users.into_iter().flatten());
        }
        if users {
            all_users.sort_unstable();
            all_users.dedup();
            summary.users = Some(all_users.len());
        }
        let summary = Arc::new(summary);
        *self
            .snapshots
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((asked, summary.clone()));
        Ok(summary)
    }

    /// A page of the allocations that have a relay socket, in id order (worker, then slot
    /// index and generation): those of `user` only when given, after the allocation named by
    /// `after` (a previous page's cursor), at most `limit`. The workers are asked in turn,
    /// each for what the page still lacks, so at most `limit` allocations are copied out.
    /// Waits at most [`ANSWER_TIMEOUT`] in all.
    pub async fn allocations(
        &self,
        user: Option<String>,
        after: Option<(usize, crate::turn::AllocationId)>,
        limit: usize,
    ) -> Result<AllocationPage, Unanswered> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let first = after.map_or(0, |(worker, _)| worker);
        let workers = self.counters.len();
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.snapshots.turn.acquire()).await
        else {
            return Err(Unanswered {
                workers: (first..workers).collect(),
            });
        };
        let mut page = AllocationPage::default();
        let mut more = false;
        for worker in first..workers {
            // Once the page is full, a worker is only asked whether anything matches.
            let request = Arc::new(status::PageRequest {
                user: user.clone(),
                after,
                limit: limit - page.allocations.len(),
            });
            let answer = self
                .commander
                .ask(
                    std::iter::once(worker),
                    |reply| Command::Allocations {
                        request: request.clone(),
                        reply,
                    },
                    deadline,
                )
                .await;
            let Some(answer) = all_answered(answer)?.pop() else {
                continue;
            };
            page.allocations.extend(answer.allocations);
            if answer.more {
                more = true;
                break;
            }
        }
        if more {
            page.next_cursor = page.allocations.last().map(|a| a.id.clone());
        }
        Ok(page)
    }

    /// Closes allocation `id` (as the status API names it) on its worker: `Ok(false)` when
    /// there is no such allocation with a relay socket.
    pub async fn close(&self, id: &str) -> Result<bool, Unanswered> {
        let Some((worker, allocation)) = status::parse_id(id) else {
            return Ok(false);
        };
        if worker >= self.counters.len() {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let answer = self
            .commander
            .ask(
                std::iter::once(worker),
                |reply| Command::Close { allocation, reply },
                deadline,
            )
            .await;
        Ok(all_answered(answer)?.pop().unwrap_or(false))
    }

    /// Starts or ends draining: no new allocations, existing ones go on. Every worker has
    /// it in its queue when this returns, so whatever is asked of the workers afterwards
    /// ([`NodeHandle::counters_now`], for one) is answered after they took it: an Allocate a
    /// worker handles after such an answer is refused.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.commander.broadcast(|| Command::Draining(draining));
    }

    /// Whether the node drains, as last set.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A handle that sends commands to the workers.
    pub fn commander(&self) -> Commander {
        self.commander.clone()
    }

    /// Enumerates this host's addresses again and, when they changed, gives the workers the
    /// new set; returns whether they changed. Control path (a thread of its own calls it every
    /// [`HOST_ADDRESS_REFRESH`]; a reload does the same).
    pub fn refresh_host_addresses(&self) -> bool {
        let mut host = self.reload.host.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fresh) = host_addresses() else {
            return false;
        };
        if fresh == *host {
            return false;
        }
        log_host_change(&host, &fresh, "refresh");
        *host = fresh.clone();
        self.commander
            .broadcast(|| Command::HostAddresses(fresh.clone()));
        true
    }
}

/// The sockets one worker serves.
struct WorkerSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<(std::net::TcpListener, bool)>,
}

impl Node {
    /// Binds every listener (once per worker, with SO_REUSEPORT) and starts the workers.
    /// `credentials` answers for users and secrets (the caller keeps its Redis part in step).
    /// `own` lists the server's other sockets (the HTTP API), which are never valid peers.
    pub fn start(
        config: &Config,
        credentials: Arc<Credentials>,
        own: &[SocketAddr],
    ) -> Result<Node, StartError> {
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let relay_v4 = match config.relay.address {
            Some(ip) => Some(ip),
            None => {
                let found = default_route_ipv4().ok_or(StartError::NoRelayAddress)?;
                tracing::info!(address = %found, "relay.address not set: relaying on the address of the default-route interface");
                Some(found)
            }
        };
        let tls = match &config.tls {
            Some(files) if config.listen.iter().any(|l| l.transport == Transport::Tls) => Some(
                tls_acceptor(&files.certificate, &files.private_key).map_err(StartError::Tls)?,
            ),
            _ => None,
        };

        let mut sockets: Vec<WorkerSockets> = (0..workers)
            .map(|_| WorkerSockets {
                udp: Vec::new(),
                tcp: Vec::new(),
            })
            .collect();
        let mut listeners = Vec::new();
        for (index, listen) in config.listen.iter().enumerate() {
            let bind_error = |address, source| StartError::Bind {
                index,
                transport: listen.transport,
                address,
                source,
            };
            let mut address = listen.address;
            for worker in sockets.iter_mut() {
                match listen.transport {
                    Transport::Udp => {
                        let socket = bind_udp(address).map_err(|e| bind_error(address, e))?;
                        address = socket.local_addr().map_err(|e| bind_error(address, e))?;
                        worker.udp.push(socket);
                    }
                    Transport::Tcp | Transport::Tls => {
                        let socket = bind_tcp(address).map_err(|e| bind_error(address, e))?;
                        address = socket.local_addr().map_err(|e| bind_error(address, e))?;
                        worker
                            .tcp
                            .push((socket, listen.transport == Transport::Tls));
                    }
                }
            }
            listeners.push(BoundListener {
                transport: listen.transport,
                address,
            });
        }

        let own: Vec<SocketAddr> = own.to_vec();
        let host = host_addresses().unwrap_or_default();
        tracing::debug!(addresses = ?host, "this host's addresses");
        let policy = peer_policy(config, &listeners, &own, relay_v4, host.clone());
        let (epoch, unix_at_epoch) = wall_clock_epoch();
        let mut nonce_key = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce_key);
        let nonces = Nonces::new(nonce_key, epoch, config.auth.nonce_lifetime);
        let offload = OffloadState::start(config.relay.offload, &listeners, relay_v4)
            .map_err(StartError::Offload)?;
        match &offload {
            OffloadState::Off => {}
            OffloadState::Unavailable(why) => tracing::warn!(
                reason = %why,
                "kernel fast path unavailable (relay.offload = \"auto\"): relaying in user space"
            ),
            OffloadState::Active(fast_path) => tracing::info!(
                interfaces = ?fast_path.interfaces(),
                "kernel fast path active: UDP channel traffic is relayed in the kernel"
            ),
        }
        let fast_path = offload.fast_path().cloned();
        let core_config = CoreConfig {
            offload: fast_path.is_some(),
            ..core_config(config, relay_v4, epoch, unix_at_epoch)
        };
        let relay_settings = worker::RelaySettings {
            v4: relay_v4.map(IpAddr::V4),
            v6: config.relay.address_v6.map(IpAddr::V6),
            ports: config.relay.ports,
            reservations: Arc::new(Reservations::default()),
        };

        let limits = &config.limits;
        let node_limits = Arc::new(NodeLimits {
            ledger: AllocationLedger::new(),
            sources: SourceLimiter::new(ReflectionBudget::from_limits(limits)),
        });
        let draining = Arc::new(AtomicBool::new(false));
        let (lease_tx, lease_rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster_link = config.redis.as_ref().map(|_| lease_tx.clone());
        let streams = Arc::new(StreamLimits::new(limits));
        let tls = Arc::new(arc_swap::ArcSwapOption::from(tls.map(Arc::new)));

        let (shutdown, stop) = watch::channel(false);
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        let mut commands = Vec::new();
        for (index, sockets) in sockets.into_iter().enumerate() {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let core = Server::new(
                core_config.clone(),
                credentials.clone(),
                policy.clone(),
                nonces.clone(),
                node_limits.clone(),
                secret,
            );
            let relay = relay_settings.clone();
            let tls = tls.clone();
            let stop = stop.clone();
            let published = Arc::new(Mutex::new(WorkerCounters::default()));
            counters.push(published.clone());
            let (command_tx, command_rx) = tokio::sync::mpsc::unbounded_channel();
            commands.push(command_tx);
            let context = worker::Context {
                index,
                redactor: audit::Redactor::new(config.log.redact, &config.realm),
                relay,
                streams: streams.clone(),
                published,
                commands: command_rx,
                cluster: cluster_link.clone(),
                fast_path: fast_path.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("turnpike-worker-{index}"))
                .spawn(move || run_worker(core, context, sockets, tls, stop))
                .map_err(StartError::Thread)?;
            threads.push(thread);
        }
        for listener in &listeners {
            tracing::info!(transport = %listener.transport, address = %listener.address, "listening");
        }
        let commander = Commander { workers: commands };
        let cluster = match &config.redis {
            Some(redis) => {
                let client = redis::Client::open(redis.url.as_str())
                    .map_err(|_| StartError::Redis(crate::config::redact_url(&redis.url)))?;
                let node_id = redis
                    .node_id
                    .clone()
                    .unwrap_or_else(|| format!("{}-{}", host_name(), listeners[0].address));
                let published = counters.clone();
                let settings = cluster::ClusterSettings {
                    prefix: redis.prefix.clone(),
                    node_id,
                    lease_time: redis.lease_time,
                    listeners: listeners.clone(),
                };
                let allocations = Box::new(move || {
                    published
                        .iter()
                        .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).allocations)
                        .sum()
                });
                Some((
                    cluster::Cluster::new(
                        settings,
                        client,
                        draining.clone(),
                        commander.clone(),
                        allocations,
                    ),
                    lease_rx,
                ))
            }
            None => None,
        };
        let handle = NodeHandle {
            commander,
            listeners: Arc::new(Mutex::new(listeners)),
            counters,
            snapshots: Arc::new(Snapshots {
                turn: tokio::sync::Semaphore::new(1),
                last: Mutex::new(None),
            }),
            streams,
            limits: node_limits,
            draining,
            reload: Arc::new(ReloadContext {
                credentials,
                tls,
                own,
                relay_v4,
                epoch,
                unix_at_epoch,
                nonce_key,
                workers,
                offload: fast_path.is_some(),
                host: Mutex::new(host),
            }),
            fast_path,
        };
        let refresher = spawn_host_refresher(handle.clone()).map_err(StartError::Thread)?;
        Ok(Node {
            handle,
            cluster,
            workers: threads,
            shutdown,
            refresher: Some(refresher),
        })
    }

    /// What the rest of the process may see and ask of this node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The listeners, with the ports actually bound (a configured port 0 becomes a real one).
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.handle.listeners()
    }

    /// The node id used when `[redis] node-id` is not set: host name and first listener.
    pub fn default_node_id(&self) -> String {
        let first = self
            .handle
            .listeners()
            .first()
            .map(|l| l.address.to_string())
            .unwrap_or_default();
        format!("{}-{first}", host_name())
    }

    /// The cluster side (registry, leases), to run on the caller's runtime; `None` without
    /// `[redis]` or once taken.
    pub fn take_cluster(
        &mut self,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.cluster
            .take()
            .map(|(cluster, requests)| cluster.run(requests))
    }

    /// A handle that sends commands to the workers.
    pub fn commander(&self) -> Commander {
        self.handle.commander()
    }

    /// The node's counters, as the workers last published them.
    pub fn counters(&self) -> NodeCounters {
        self.handle.counters()
    }

    /// Stops the workers and the host address refresher, and waits for them.
    pub fn shutdown(mut self) {
        if let Some((stop, thread)) = self.refresher.take() {
            drop(stop);
            let _ = thread.join();
        }
        let _ = self.shutdown.send(true);
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

/// Starts the thread that enumerates the host's addresses every [`HOST_ADDRESS_REFRESH`] (off
/// the packet path: the workers only get a command when the set changed). It ends when the
/// returned sender is dropped.
fn spawn_host_refresher(
    handle: NodeHandle,
) -> std::io::Result<(std::sync::mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("turnpike-addresses".to_owned())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(HOST_ADDRESS_REFRESH)
            {
                handle.refresh_host_addresses();
            }
        })?;
    Ok((stop, thread))
}

/// Logs how the host's addresses changed (nothing when they did not).
fn log_host_change(old: &HostAddresses, new: &HostAddresses, noticed_by: &'static str) {
    if old == new {
        return;
    }
    let added: Vec<IpAddr> = new.iter().filter(|ip| !old.contains(*ip)).collect();
    let removed: Vec<IpAddr> = old.iter().filter(|ip| !new.contains(*ip)).collect();
    tracing::info!(
        ?added,
        ?removed,
        addresses = new.len(),
        noticed_by,
        "host addresses changed"
    );
}

fn run_worker(
    core: Server,
    context: worker::Context,
    sockets: WorkerSockets,
    tls: stream::SharedAcceptor,
    mut stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut udp = Vec::new();
        for socket in sockets.udp {
            match worker::UdpListener::new(socket) {
                Ok(listener) => udp.push(listener),
                Err(error) => tracing::error!(%error, "UDP listener setup failed"),
            }
        }
        let shared = match worker::Worker::new(core, context, udp, tls) {
            Ok(shared) => shared,
            Err(error) => {
                tracing::error!(%error, "cannot start worker: no relay socket set");
                return;
            }
        };
        worker::Worker::start(&shared);
        for (listener, is_tls) in sockets.tcp {
            worker::Worker::add_tcp(&shared, listener, is_tls);
        }
        let _ = stop.wait_for(|stopped| *stopped).await;
    });
}

/// The core's epoch and the wall-clock second it falls on. The epoch is put back to the start
/// of that second, so that `unix_at_epoch` plus whole seconds elapsed is the wall clock
/// truncated, not up to a second behind it (REST expiries are compared in whole seconds).
fn wall_clock_epoch() -> (Instant, u64) {
    let now = Instant::now();
    let since_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let into_second = Duration::from_nanos(u64::from(since_unix.subsec_nanos()));
    // Only fails within a second of the monotonic clock's origin (boot): then the reading is
    // at most that second behind, as before.
    match now.checked_sub(into_second) {
        Some(epoch) => (epoch, since_unix.as_secs()),
        None => (now, since_unix.as_secs()),
    }
}

/// This machine's host name, for the default node id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "turnpike".to_owned())
}

/// IPv4-mapped addresses (from sockets that accept both families) become plain IPv4, so a
/// client has one 5-tuple whatever the socket reported.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn bind_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = new_socket(address, socket2::Type::DGRAM)?;
    // Room for bursts: the kernel default drops packets under load.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&address.into())?;
    Ok(socket.into())
}

fn bind_tcp(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = new_socket(address, socket2::Type::STREAM)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

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

/// The IPv4 address of the interface holding the default route, from `/proc/net/route` and
/// `getifaddrs`. Sends no packet.
pub fn default_route_ipv4() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let interface = routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let metric: u32 = fields.get(6)?.parse().ok()?;
            (fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000"))
                .then(|| (metric, fields[0].to_owned()))
        })
        .min()?
        .1;
    interface_ipv4(&interface)
}

fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    interface_addresses()?
        .into_iter()
        .find_map(|(interface, ip)| match ip {
            IpAddr::V4(v4) if interface == name => Some(v4),
            _ => None,
        })
}

/// The addresses of every interface of this host (IPv4 and IPv6, loopback included), or
/// `None` when they cannot be enumerated.
fn host_addresses() -> Option<HostAddresses> {
    let addresses = interface_addresses()?;
    Some(HostAddresses::new(addresses.into_iter().map(|(_, ip)| ip)))
}

/// Every (interface name, address) pair `getifaddrs` lists, in its order.
fn interface_addresses() -> Option<Vec<(String, IpAddr)>> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = Vec::new();
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        let name = name.to_string_lossy().into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it declares.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            found.push((name, IpAddr::V4(ip)));
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            found.push((name, IpAddr::V6(ip)));
        }
    }
    // SAFETY: `addrs` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_falls_on_a_wall_clock_second() {
        let (epoch, unix_at_epoch) = wall_clock_epoch();
        let elapsed = epoch.elapsed();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("the clock is after 1970");
        // Unaligned, the prediction would be up to a second behind the wall clock.
        let predicted = Duration::from_secs(unix_at_epoch) + elapsed;
        assert!(
            predicted.abs_diff(wall) < Duration::from_millis(200),
            "predicted {predicted:?}, wall clock {wall:?}"
        );
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(source_of(ip("192.0.2.7")), source_of(ip("192.0.2.8")));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::1")), ip("::"));
    }

    #[test]
    fn loopback_interface_has_an_ipv4_address() {
        assert_eq!(interface_ipv4("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_ipv4("no-such-interface"), None);
    }

    #[test]
    fn host_addresses_hold_loopback_and_the_default_route_address() {
        let host = host_addresses().expect("getifaddrs works");
        assert!(host.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)), "{host:?}");
        if let Some(default) = default_route_ipv4() {
            assert!(
                host.contains(IpAddr::V4(default)),
                "{default} not in {host:?}"
            );
        }
    }
}
