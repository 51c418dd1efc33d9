//! Loading the program and attaching it: the kernel checked for TCX links, the object loaded
//! with its maps, the interfaces that carry the server's addresses found, and aya's errors
//! turned into a [`Why`] that says what to do.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use aya::programs::LinkOrder;
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use super::{FastPath, SLOTS, Tables, Why};

/// The compiled program (scripts/build-bpf.sh rebuilds it from relay.bpf.c).
static OBJECT: &[u8] = aya::include_bytes_aligned!("relay.bpf.o");

/// The oldest kernel with TCX links: a program attached through a link lives only as long as
/// the file descriptor, which is what ties it to the process.
pub(super) const OLDEST_KERNEL: (u32, u32) = (6, 6);

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
