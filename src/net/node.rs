//! Starting a node: binding every listener once per worker, building each worker's core, and
//! running the workers, each on a thread of its own; and stopping them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rand::RngCore;
use tokio::sync::watch;

use crate::auth::Credentials;
use crate::config::{Config, Transport};
use crate::turn::{
    AllocationLedger, CoreConfig, NodeLimits, Nonces, ReflectionBudget, Server, SourceLimiter,
};

use super::command::Commander;
use super::counters::WorkerCounters;
use super::handle::Snapshots;
use super::host::{HOST_ADDRESS_REFRESH, default_route_ipv4, host_addresses};
use super::relay::Reservations;
use super::reload::ReloadContext;
use super::settings::{core_config, peer_policy};
use super::socket::{bind_tcp, bind_udp};
use super::stream::{self, StreamLimits, tls_acceptor};
use super::{BoundListener, Node, NodeCounters, NodeHandle, audit, cluster, offload, worker};

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
        "relay.address is not set and this host has no IPv4 default route to take its source address from; set [relay] address"
    )]
    NoRelayAddress,
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("redis.url: invalid Redis URL {0}")]
    Redis(String),
    #[error("relay.offload = \"on\" but the kernel fast path cannot run: {0}")]
    Offload(offload::Why),
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
        match offload::FastPath::load(&Self::carried(listeners, relay_v4)) {
            Ok(fast_path) => Ok(OffloadState::Active(Arc::new(fast_path))),
            Err(why) if mode == crate::config::Offload::Auto => Ok(OffloadState::Unavailable(why)),
            Err(why) => Err(why),
        }
    }

    /// The addresses whose interfaces the fast path attaches to: the UDP listeners' and the
    /// relay's (at start, and when a reload asks what an added listener would need).
    pub(super) fn carried(listeners: &[BoundListener], relay_v4: Option<Ipv4Addr>) -> Vec<IpAddr> {
        listeners
            .iter()
            .filter(|l| l.transport == Transport::Udp)
            .map(|l| l.address.ip())
            .chain(relay_v4.map(IpAddr::V4))
            .collect()
    }

    /// The fast path, when active.
    pub fn fast_path(&self) -> Option<&Arc<offload::FastPath>> {
        match self {
            OffloadState::Active(fast_path) => Some(fast_path),
            _ => None,
        }
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
            0 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let max = crate::turn::MAX_TCP_RELAY_WORKERS;
                if config.relay.tcp && cores > max {
                    tracing::warn!(
                        cores,
                        workers = max,
                        "[relay] tcp is on: running at most {max} workers (a CONNECTION-ID names its worker in one byte)"
                    );
                    max
                } else {
                    cores
                }
            }
            n => n,
        };
        let relay_v4 = match config.relay.address {
            Some(ip) => Some(ip),
            None => {
                let found = default_route_ipv4().ok_or(StartError::NoRelayAddress)?;
                tracing::info!(address = %found, "relay.address not set: relaying on the source address of the default route");
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
            tcp_ports: Arc::default(),
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
        streams.set_proxies(&config.listen, &listeners);
        let tls = Arc::new(arc_swap::ArcSwapOption::from(tls.map(Arc::new)));

        let (shutdown, stop) = watch::channel(false);
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        // Every worker can reach every other (a ConnectionBind may arrive on any of them).
        let (commands, mut receivers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let peers: Arc<[_]> = commands.clone().into();
        for (index, sockets) in sockets.into_iter().enumerate() {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let mut core = Server::new(
                core_config.clone(),
                credentials.clone(),
                policy.clone(),
                nonces.clone(),
                node_limits.clone(),
                secret,
            );
            core.set_worker_index(index);
            let relay = relay_settings.clone();
            let tls = tls.clone();
            let stop = stop.clone();
            let published = Arc::new(Mutex::new(WorkerCounters::default()));
            counters.push(published.clone());
            let command_rx = receivers.remove(0);
            let context = worker::Context {
                index,
                redactor: audit::Redactor::new(config.log.redact, &config.realm),
                relay,
                streams: streams.clone(),
                published,
                commands: command_rx,
                peers: peers.clone(),
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
        let commander = Commander::new(commands);
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

    /// The IPv4 address relay sockets are bound to (`[relay] address`, or the default route's
    /// source address when it is not set).
    pub fn relay_v4(&self) -> Option<Ipv4Addr> {
        self.handle.reload.relay_v4
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
}
