//! The tokio I/O shell: binds the listeners, runs one single-threaded worker per core, and
//! carries datagrams between sockets and the protocol cores. It makes no protocol decision.
//!
//! The node's two faces are declared here: [`Node`], which starts and stops it (its code is
//! in `node.rs`), and [`NodeHandle`], what the rest of the process sees and asks of it
//! (`handle.rs`; `reload.rs` for a reload). Their fields are private to this module, which
//! those files are part of.

mod accept;
mod audit;
pub mod batch;
pub mod cluster;
mod command;
mod counters;
mod handle;
mod host;
mod node;
pub mod offload;
mod poller;
mod relay;
mod reload;
mod settings;
mod socket;
pub mod status;
mod stream;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::config::Transport;
use crate::turn::NodeLimits;

pub use accept::AcceptBackoff;
pub use command::Reconfiguration;
pub use command::{ANSWER_TIMEOUT, Command, Commander, Unanswered};
pub use counters::{NodeCounters, WorkerCounters};
pub use handle::{AllocationPage, NodeSummary};
pub use host::{HOST_ADDRESS_REFRESH, default_route_ipv4};
pub use node::{OffloadState, StartError};
pub use relay::Reservations;
pub(crate) use settings::{core_config, peer_policy};
pub(crate) use stream::StreamLimits;
pub use stream::tls_acceptor;

use handle::Snapshots;
use reload::ReloadContext;

/// A bound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundListener {
    pub transport: Transport,
    pub address: SocketAddr,
}

impl BoundListener {
    /// Is this the socket bound for `wanted`? A configured port 0 matches whatever port it was
    /// given.
    pub(crate) fn is(&self, wanted: &crate::config::Listen) -> bool {
        wanted.transport == self.transport
            && (wanted.address == self.address
                || (wanted.address.port() == 0 && wanted.address.ip() == self.address.ip()))
    }
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
