//! The kernel fast path: loads `relay.bpf.o` (source beside it) at TC ingress of the interfaces
//! that carry the server's addresses and keeps its tables. User space is the control plane:
//! it writes an entry per bound channel with a permitted peer and deletes it when anything
//! ends it; the program relays only what is in its tables and passes everything else up.
//!
//! Lifetime: the program is attached through TCX links (Linux 6.6 and later) owned by
//! [`FastPath`]; nothing is pinned, so dropping it, or the process dying by any signal,
//! detaches the program and frees the tables.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::LinkOrder;
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader, Pod};

mod route;
pub use route::Route;

/// The compiled program (scripts/build-bpf.sh rebuilds it from relay.bpf.c).
static OBJECT: &[u8] = aya::include_bytes_aligned!("relay.bpf.o");

/// Slots of per-allocation counters (`SLOTS` in relay.bpf.c).
pub const SLOTS: u32 = 65_536;

/// The oldest kernel with TCX links: a program attached through a link lives only as long as
/// the file descriptor, which is what ties it to the process.
const OLDEST_KERNEL: (u32, u32) = (6, 6);

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

// The map layouts, byte for byte as in relay.bpf.c. Addresses and ports are stored as their
// network-order bytes.

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct ChannelKey {
    client_ip: u32,
    listener_ip: u32,
    client_port: u16,
    listener_port: u16,
    channel: u16,
    pad: u16,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct ChannelEntry {
    relay_ip: u32,
    peer_ip: u32,
    relay_port: u16,
    peer_port: u16,
    slot: u32,
    max_payload: u16,
    pad: u16,
    ifindex: u32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct PeerKey {
    peer_ip: u32,
    relay_ip: u32,
    peer_port: u16,
    relay_port: u16,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct PeerEntry {
    client_ip: u32,
    listener_ip: u32,
    client_port: u16,
    listener_port: u16,
    channel: u16,
    max_payload: u16,
    slot: u32,
    ifindex: u32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct RawCounters {
    to_peer_packets: u64,
    to_peer_bytes: u64,
    to_client_packets: u64,
    to_client_bytes: u64,
}

// SAFETY: plain `repr(C)` structs of integers whose padding is explicit, so every byte is
// initialised and any bit pattern is valid.
unsafe impl Pod for ChannelKey {}
// SAFETY: as above.
unsafe impl Pod for ChannelEntry {}
// SAFETY: as above.
unsafe impl Pod for PeerKey {}
// SAFETY: as above.
unsafe impl Pod for PeerEntry {}
// SAFETY: as above.
unsafe impl Pod for RawCounters {}

/// Indexes of the program's `totals` map.
const TOTAL_CARRIED: u32 = 0;
const TOTAL_FAILED: u32 = 1;
const TOTAL_PARTIAL: u32 = 2;
const TOTAL_TOO_BIG: u32 = 3;
const TOTAL_LOCAL: u32 = 4;

struct Tables {
    channels: HashMap<MapData, ChannelKey, ChannelEntry>,
    peers: HashMap<MapData, PeerKey, PeerEntry>,
    counters: PerCpuArray<MapData, RawCounters>,
    totals: PerCpuArray<MapData, u64>,
}

impl Tables {
    /// The program's total `index`, summed over CPUs.
    fn total(&self, index: u32) -> Result<u64, Why> {
        let values = self
            .totals
            .get(&index, 0)
            .map_err(|error| Why::Table(error.to_string()))?;
        Ok(values.iter().sum())
    }
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
    /// Loads the program and attaches it at ingress of the interfaces that carry `addresses`
    /// (the UDP listeners' and the relay's; a wildcard means every Ethernet or loopback
    /// interface that is up with an IPv4 address). IPv6 addresses are skipped: their traffic
    /// goes up. A datagram the program rewrites is routed by the kernel's routing table (to a
    /// local socket, or redirected out of the interface the route names).
    pub fn load(addresses: &[IpAddr]) -> Result<FastPath, Why> {
        check_kernel()?;
        let interfaces = interfaces_for(addresses)?;
        if interfaces.is_empty() {
            return Err(Why::NothingToAttach);
        }
        let mut program = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|error| classify(&error, Why::Load))?;
        let classifier: &mut SchedClassifier = program
            .program_mut("turnpike_relay")
            .ok_or_else(|| Why::Load("the object has no program turnpike_relay".into()))?
            .try_into()
            .map_err(|error: aya::programs::ProgramError| Why::Load(error.to_string()))?;
        classifier
            .load()
            .map_err(|error| classify(&error, Why::Load))?;
        for interface in &interfaces {
            // TCX explicitly: the netlink (tc filter) attachment would outlive the process.
            classifier
                .attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|error| {
                    classify(&error, |detail| Why::Attach {
                        interface: interface.clone(),
                        error: detail,
                    })
                })?;
        }
        let tables = Tables {
            channels: take_map(&mut program, "channels")?,
            peers: take_map(&mut program, "peers")?,
            counters: take_map(&mut program, "counters")?,
            totals: take_map(&mut program, "totals")?,
        };
        let cpus =
            aya::util::nr_cpus().map_err(|(what, error)| Why::Load(format!("{what}: {error}")))?;
        Ok(FastPath {
            _program: program,
            tables: Mutex::new(tables),
            interfaces,
            cpus,
            free_slots: Mutex::new((0..SLOTS).rev().collect()),
        })
    }

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

    /// Writes both directions of `channel`, each with where the kernel's routing table sends
    /// it now; an existing entry for the same keys is replaced. A direction with no route the
    /// program can follow leaves the channel to user space.
    pub fn install(&self, channel: &Channel) -> Result<(), Why> {
        let to_peer = route_between(channel.relay, channel.peer)?;
        let to_client = route_between(channel.listener, channel.client)?;
        let (channel_key, channel_entry, peer_key, peer_entry) =
            entries(channel, to_peer, to_client)?;
        let mut tables = self.lock();
        tables
            .channels
            .insert(channel_key, channel_entry, 0)
            .map_err(|error| Why::Table(error.to_string()))?;
        if let Err(error) = tables.peers.insert(peer_key, peer_entry, 0) {
            let _ = tables.channels.remove(&channel_key);
            return Err(Why::Table(error.to_string()));
        }
        Ok(())
    }

    /// Deletes both directions of `channel` (absent entries are fine).
    pub fn remove(&self, channel: &Channel) -> Result<(), Why> {
        let (channel_key, _, peer_key, _) = entries(channel, Route::Local, Route::Local)?;
        let mut tables = self.lock();
        let removed = [
            tables.channels.remove(&channel_key),
            tables.peers.remove(&peer_key),
        ];
        for result in removed {
            match result {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => return Err(Why::Table(error.to_string())),
            }
        }
        Ok(())
    }

    /// What the kernel carried for `slot` since it was last reset.
    pub fn counters(&self, slot: u32) -> Result<SlotCounters, Why> {
        let tables = self.lock();
        let values = tables
            .counters
            .get(&slot, 0)
            .map_err(|error| Why::Table(error.to_string()))?;
        Ok(values
            .iter()
            .fold(SlotCounters::default(), |sum, cpu| SlotCounters {
                to_peer_packets: sum.to_peer_packets + cpu.to_peer_packets,
                to_peer_bytes: sum.to_peer_bytes + cpu.to_peer_bytes,
                to_client_packets: sum.to_client_packets + cpu.to_client_packets,
                to_client_bytes: sum.to_client_bytes + cpu.to_client_bytes,
            }))
    }

    /// Zeroes `slot`'s counters, for its next allocation.
    pub fn reset(&self, slot: u32) -> Result<(), Why> {
        let zero = PerCpuValues::try_from(vec![RawCounters::default(); self.cpus])
            .map_err(|error| Why::Table(error.to_string()))?;
        self.lock()
            .counters
            .set(slot, zero, 0)
            .map_err(|error| Why::Table(error.to_string()))
    }

    /// Datagrams the kernel relayed in either direction since the program was loaded.
    pub fn carried(&self) -> Result<u64, Why> {
        self.total(TOTAL_CARRIED)
    }

    /// [`FastPath::carried`] and what the program left to user space, by reason.
    pub fn totals(&self) -> Result<Totals, Why> {
        let tables = self.lock();
        Ok(Totals {
            carried: tables.total(TOTAL_CARRIED)?,
            checksum_partial: tables.total(TOTAL_PARTIAL)?,
            too_big: tables.total(TOTAL_TOO_BIG)?,
            local_off_lo: tables.total(TOTAL_LOCAL)?,
        })
    }

    /// Datagrams the kernel failed to rewrite half-way (dropped; expected to stay 0).
    pub fn failed(&self) -> Result<u64, Why> {
        self.total(TOTAL_FAILED)
    }

    fn total(&self, index: u32) -> Result<u64, Why> {
        self.lock().total(index)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves the tables as consistent as the kernel keeps
        // them (each update is one syscall), so a poisoned lock is still usable.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn take_map<M>(program: &mut Ebpf, name: &str) -> Result<M, Why>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = program
        .take_map(name)
        .ok_or_else(|| Why::Load(format!("the object has no map {name}")))?;
    M::try_from(map).map_err(|error| Why::Load(format!("map {name}: {error}")))
}

fn check_kernel() -> Result<(), Why> {
    let found = KernelVersion::current().map_err(|error| Why::KernelVersion(error.to_string()))?;
    if found < KernelVersion::new(OLDEST_KERNEL.0 as u8, OLDEST_KERNEL.1 as u8, 0) {
        return Err(Why::KernelTooOld {
            found: format!("{found:?}"),
        });
    }
    Ok(())
}

/// Turns an aya error into a [`Why`], recognising a missing capability anywhere in its chain.
fn classify(error: &(dyn std::error::Error + 'static), other: impl FnOnce(String) -> Why) -> Why {
    let mut detail = error.to_string();
    let mut source = error.source();
    let mut not_permitted = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                not_permitted = true;
            }
        }
        cause = current.source();
    }
    while let Some(next) = source {
        // Some errors repeat their source in their own message.
        let said = next.to_string();
        if !detail.contains(&said) {
            detail.push_str(": ");
            detail.push_str(&said);
        }
        source = next.source();
    }
    if not_permitted {
        Why::NotPermitted(detail)
    } else {
        other(detail)
    }
}

fn v4(address: SocketAddr) -> Result<SocketAddrV4, Why> {
    match address {
        SocketAddr::V4(address) => Ok(address),
        SocketAddr::V6(_) => Err(Why::NotIpv4(address)),
    }
}

fn ip_bytes(address: &SocketAddrV4) -> u32 {
    u32::from_ne_bytes(address.ip().octets())
}

fn port_bytes(address: &SocketAddrV4) -> u16 {
    u16::from_ne_bytes(address.port().to_be_bytes())
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

/// Where the kernel routes a datagram from `from` (one of this host's addresses) to `to`.
fn route_between(from: SocketAddr, to: SocketAddr) -> Result<Route, Why> {
    let (from, to) = (v4(from)?, v4(to)?);
    match route::lookup(*from.ip(), *to.ip()) {
        Ok(Some(route)) => Ok(route),
        Ok(None) => Err(Why::NoRoute(format!("{to} from {from}"))),
        Err(error) => Err(Why::Route {
            to: to.to_string(),
            error: error.to_string(),
        }),
    }
}

/// The interface index and the largest payload carried for a direction whose route is
/// `route` and whose datagrams have `overhead` bytes of IP and UDP (and ChannelData) headers.
fn direction(route: Route, max_payload: u16, overhead: u32) -> (u32, u16) {
    match route {
        Route::Local => (0, max_payload),
        Route::Interface { ifindex, mtu } => {
            let fits = mtu.saturating_sub(overhead).min(u32::from(max_payload));
            (ifindex, fits as u16)
        }
    }
}

fn entries(
    channel: &Channel,
    to_peer: Route,
    to_client: Route,
) -> Result<(ChannelKey, ChannelEntry, PeerKey, PeerEntry), Why> {
    let client = v4(channel.client)?;
    let listener = v4(channel.listener)?;
    let relay = v4(channel.relay)?;
    let peer = v4(channel.peer)?;
    if !crate::stun::channel::is_valid_channel_number(channel.channel) {
        return Err(Why::Table(format!(
            "channel {:#06x} is outside 0x4000..=0x7FFF",
            channel.channel
        )));
    }
    if channel.slot >= SLOTS {
        return Err(Why::Table(format!(
            "slot {} is outside 0..{SLOTS}",
            channel.slot
        )));
    }
    let number = u16::from_ne_bytes(channel.channel.to_be_bytes());
    // Leaving the host, a datagram must fit the path's MTU unfragmented (the program does not
    // fragment): a larger one goes up, and user space sends it.
    let (peer_ifindex, peer_payload) = direction(to_peer, channel.max_payload, 20 + 8);
    let (client_ifindex, client_payload) = direction(to_client, channel.max_payload, 20 + 8 + 4);
    Ok((
        ChannelKey {
            client_ip: ip_bytes(&client),
            listener_ip: ip_bytes(&listener),
            client_port: port_bytes(&client),
            listener_port: port_bytes(&listener),
            channel: number,
            pad: 0,
        },
        ChannelEntry {
            relay_ip: ip_bytes(&relay),
            peer_ip: ip_bytes(&peer),
            relay_port: port_bytes(&relay),
            peer_port: port_bytes(&peer),
            slot: channel.slot,
            max_payload: peer_payload,
            pad: 0,
            ifindex: peer_ifindex,
        },
        PeerKey {
            peer_ip: ip_bytes(&peer),
            relay_ip: ip_bytes(&relay),
            peer_port: port_bytes(&peer),
            relay_port: port_bytes(&relay),
        },
        PeerEntry {
            client_ip: ip_bytes(&client),
            listener_ip: ip_bytes(&listener),
            client_port: port_bytes(&client),
            listener_port: port_bytes(&listener),
            channel: number,
            max_payload: client_payload,
            slot: channel.slot,
            ifindex: client_ifindex,
        },
    ))
}

/// The interfaces that carry `addresses`: for a wildcard, every Ethernet or loopback
/// interface that is up and has an IPv4 address.
pub(crate) fn interfaces_for(addresses: &[IpAddr]) -> Result<Vec<String>, Why> {
    let found = ipv4_interfaces().map_err(Why::Interfaces)?;
    let mut chosen = BTreeSet::new();
    for address in addresses {
        let IpAddr::V4(address) = address else {
            continue;
        };
        if address.is_unspecified() {
            chosen.extend(found.iter().map(|(name, _)| name.clone()));
            continue;
        }
        let carrying = if address.is_loopback() {
            // All of 127.0.0.0/8 is on lo, though lo lists only 127.0.0.1.
            found.iter().find(|(_, ip)| ip.is_loopback())
        } else {
            found.iter().find(|(_, ip)| ip == address)
        };
        let (name, _) = carrying.ok_or(Why::NoInterface(IpAddr::V4(*address)))?;
        chosen.insert(name.clone());
    }
    for name in &chosen {
        // ARPHRD_ETHER (1) or ARPHRD_LOOPBACK (772): both frame with a 14-byte Ethernet header.
        let kind =
            std::fs::read_to_string(format!("/sys/class/net/{name}/type")).unwrap_or_default();
        if !matches!(kind.trim(), "1" | "772") {
            return Err(Why::NotEthernet(name.clone()));
        }
    }
    Ok(chosen.into_iter().collect())
}

/// (interface name, IPv4 address) of every interface that is up.
fn ipv4_interfaces() -> io::Result<Vec<(String, Ipv4Addr)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let address = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        found.push((name, ip));
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_program() {
        // Sizes of the C structs in relay.bpf.c; the loader also checks them against BTF.
        assert_eq!(std::mem::size_of::<ChannelKey>(), 16);
        assert_eq!(std::mem::size_of::<ChannelEntry>(), 24);
        assert_eq!(std::mem::size_of::<PeerKey>(), 12);
        assert_eq!(std::mem::size_of::<PeerEntry>(), 24);
        assert_eq!(std::mem::size_of::<RawCounters>(), 32);
    }

    /// A channel between loopback addresses the program can carry.
    fn sample() -> Channel {
        Channel {
            client: "127.0.0.2:1234".parse().unwrap(),
            listener: "127.0.0.1:3478".parse().unwrap(),
            channel: 0x4001,
            relay: "127.0.0.1:50000".parse().unwrap(),
            peer: "127.0.0.3:9".parse().unwrap(),
            slot: 7,
            max_payload: 1500,
        }
    }

    #[test]
    fn entries_are_network_order() {
        let channel = sample();
        let (key, entry, peer_key, peer_entry) =
            entries(&channel, Route::Local, Route::Local).unwrap();
        assert_eq!(key.client_ip.to_ne_bytes(), [127, 0, 0, 2]);
        assert_eq!(key.client_port.to_ne_bytes(), 1234u16.to_be_bytes());
        assert_eq!(key.channel.to_ne_bytes(), [0x40, 0x01]);
        assert_eq!(entry.peer_port.to_ne_bytes(), 9u16.to_be_bytes());
        assert_eq!(peer_key.relay_port.to_ne_bytes(), 50000u16.to_be_bytes());
        assert_eq!(
            peer_entry.listener_port.to_ne_bytes(),
            3478u16.to_be_bytes()
        );
        assert_eq!(peer_entry.slot, 7);
    }

    #[test]
    fn a_route_off_the_host_names_its_interface_and_caps_the_payload_at_its_mtu() {
        let out = Route::Interface {
            ifindex: 9,
            mtu: 1500,
        };
        let (_, to_peer, _, to_client) = entries(&sample(), out, Route::Local).unwrap();
        assert_eq!((to_peer.ifindex, to_peer.max_payload), (9, 1500 - 28));
        assert_eq!((to_client.ifindex, to_client.max_payload), (0, 1500));
        let (_, to_peer, _, to_client) = entries(&sample(), Route::Local, out).unwrap();
        assert_eq!((to_peer.ifindex, to_peer.max_payload), (0, 1500));
        assert_eq!((to_client.ifindex, to_client.max_payload), (9, 1500 - 32));
        // An MTU below the headers carries nothing (a 0 payload is never carried).
        let tiny = Route::Interface {
            ifindex: 9,
            mtu: 20,
        };
        let (_, to_peer, _, _) = entries(&sample(), tiny, Route::Local).unwrap();
        assert_eq!(to_peer.max_payload, 0);
    }

    #[test]
    fn entries_refuse_what_the_program_cannot_carry() {
        let good = sample();
        for bad in [
            Channel {
                channel: 0x3FFF,
                ..good
            },
            Channel {
                channel: 0x8000,
                ..good
            },
            Channel {
                slot: SLOTS,
                ..good
            },
            Channel {
                peer: "[::1]:9".parse().unwrap(),
                ..good
            },
            Channel {
                client: "[2001:db8::1]:5000".parse().unwrap(),
                ..good
            },
        ] {
            assert!(
                entries(&bad, Route::Local, Route::Local).is_err(),
                "{bad:?}"
            );
        }
    }
}
