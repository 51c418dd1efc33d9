//! The kernel fast path: loads `relay.bpf.o` (source beside it) at TC ingress of the interfaces
//! that carry the server's addresses and keeps its tables. User space is the control plane:
//! it writes an entry per bound channel with a permitted peer and deletes it when anything
//! ends it; the program relays only what is in its tables and passes everything else up.
//!
//! Lifetime: the program is attached through TCX links (Linux 6.6 and later) owned by
//! [`FastPath`]; nothing is pinned, so dropping it, or the process dying by any signal,
//! detaches the program and frees the tables.
//!
//! This file holds the public face ([`FastPath`], [`Channel`], [`Why`], ...) and the counter
//! slots. `load.rs` loads and attaches the program; `entries.rs` writes the channel tables;
//! `counters.rs` reads what the program counted; `route.rs` asks the kernel for routes.

mod counters;
mod entries;
mod load;
pub(crate) use load::interfaces_for;
mod route;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuArray};

use counters::RawCounters;
use entries::{ChannelEntry, ChannelKey, PeerEntry, PeerKey};
use load::OLDEST_KERNEL;

pub use route::Route;

/// Slots of per-allocation counters (`SLOTS` in relay.bpf.c).
pub const SLOTS: u32 = 65_536;

/// Why the fast path cannot run. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Why {
    #[error(
        "not permitted to load eBPF programs (run as root, or give the process CAP_BPF and CAP_NET_ADMIN): {0}"
    )]
    NotPermitted(String),
    #[error(
        "kernel {found} is too old: the fast path needs Linux {}.{} or later (TCX links)",
        OLDEST_KERNEL.0,
        OLDEST_KERNEL.1
    )]
    KernelTooOld { found: String },
    #[error("cannot read the kernel version: {0}")]
    KernelVersion(String),
    #[error("the kernel refused the program: {0}")]
    Load(String),
    #[error("cannot attach to interface {interface}: {error}")]
    Attach { interface: String, error: String },
    #[error("no interface carries {0}")]
    NoInterface(IpAddr),
    #[error("no IPv4 UDP listener or relay address to attach to (IPv6 is not carried yet)")]
    NothingToAttach,
    #[error("interface {0} is not Ethernet or loopback (the program reads an Ethernet header)")]
    NotEthernet(String),
    #[error("cannot list network interfaces: {0}")]
    Interfaces(io::Error),
    #[error("only IPv4 is carried by the fast path so far ({0})")]
    NotIpv4(SocketAddr),
    #[error("cannot update the fast path's tables: {0}")]
    Table(String),
    #[error("no route the fast path can follow to {0}")]
    NoRoute(String),
    #[error("cannot ask the kernel for the route to {to}: {error}")]
    Route { to: String, error: String },
}

/// One bound channel with a permitted peer, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Channel {
    /// The client's address as the listener sees it.
    pub client: SocketAddr,
    /// The listener the client talks to.
    pub listener: SocketAddr,
    /// The channel number, 0x4000..=0x7FFF (what the core binds).
    pub channel: u16,
    /// The allocation's relayed address.
    pub relay: SocketAddr,
    /// The peer bound to the channel.
    pub peer: SocketAddr,
    /// The allocation's counter slot, below [`SLOTS`].
    pub slot: u32,
    /// The largest application payload carried in the kernel; larger ones go up.
    pub max_payload: u16,
}

/// The program's own totals since it was loaded: what it carried, and the datagrams of bound
/// channels it left to user space, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Relayed in the kernel, both directions.
    pub carried: u64,
    /// Left up: the checksum was still to be filled in and the datagram would leave the host.
    pub checksum_partial: u64,
    /// Left up: too big for the outgoing interface's MTU.
    pub too_big: u64,
    /// Left up: for a socket on this host, arrived on another interface than lo.
    pub local_off_lo: u64,
}

/// What the kernel carried for one slot, summed over CPUs. Bytes are application payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounters {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

/// The program's maps, as user space holds them.
struct Tables {
    channels: HashMap<MapData, ChannelKey, ChannelEntry>,
    peers: HashMap<MapData, PeerKey, PeerEntry>,
    counters: PerCpuArray<MapData, RawCounters>,
    totals: PerCpuArray<MapData, u64>,
}

/// The loaded and attached program with its tables. Dropping it detaches the program.
pub struct FastPath {
    /// Owns the program and its TCX links: dropped, they close and the program detaches.
    _program: Ebpf,
    /// Control-plane writes only (a channel bound or ended), never per packet.
    tables: Mutex<Tables>,
    interfaces: Vec<String>,
    cpus: usize,
    /// Counter slots nobody holds (all workers share the program's tables).
    free_slots: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("interfaces", &self.interfaces)
            .finish()
    }
}

impl FastPath {
    /// A counter slot for a new allocation, zeroed; `None` when all are taken (the
    /// allocation then stays in user space).
    pub fn acquire_slot(&self) -> Option<u32> {
        let slot = self
            .free_slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()?;
        if self.reset(slot).is_err() {
            self.release_slot(slot);
            return None;
        }
        Some(slot)
    }

    /// Gives a slot back once nothing refers to it any more.
    pub fn release_slot(&self, slot: u32) {
        self.free_slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(slot);
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves the tables as consistent as the kernel keeps
        // them (each update is one syscall), so a poisoned lock is still usable.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether the fast path can carry a channel between these addresses: IPv4 only so far;
/// anything else stays in user space.
pub fn carries(
    client: SocketAddr,
    listener: SocketAddr,
    relay: SocketAddr,
    peer: SocketAddr,
) -> bool {
    [client, listener, relay, peer]
        .iter()
        .all(|address| address.is_ipv4())
}
