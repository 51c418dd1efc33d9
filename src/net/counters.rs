//! The counters a worker publishes and the node's sum of them.

use crate::turn::Stats;

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
    /// Connections to a `proxy-protocol` listener closed before they carried a client: from a
    /// source outside `proxy-from`, without a valid PROXY protocol header, or naming a client
    /// another connection has.
    pub proxy_refused: u64,
    /// Relayed frames dropped because the TCP/TLS client's output queue was full.
    pub dropped_stream_full: u64,
    /// Datagrams the kernel refused to send (UDP socket buffer full), to clients or peers.
    pub dropped_send_failed: u64,
}

impl WorkerCounters {
    /// Adds `other`'s counts to these (summing workers).
    pub(super) fn add(&mut self, other: &WorkerCounters) {
        self.core.add(&other.core);
        self.allocations += other.allocations;
        self.tcp_rejected += other.tcp_rejected;
        self.tcp_rejected_per_source += other.tcp_rejected_per_source;
        self.stream_timeouts += other.stream_timeouts;
        self.stream_write_timeouts += other.stream_write_timeouts;
        self.proxy_refused += other.proxy_refused;
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
