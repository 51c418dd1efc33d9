//! What the status API reads about allocations: plain snapshots a worker copies out of its
//! core when asked (a command with a reply), so the HTTP side never touches a core and a
//! worker does no work for the API that nobody asked for.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::config::Transport;
use crate::turn::{Allocation, AllocationId, Server, Traffic};

use super::WorkerCounters;

/// One allocation as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationInfo {
    /// `<worker>.<index>.<generation>`: names the allocation for `DELETE`.
    pub id: String,
    /// The user-id part of the username (what quotas count).
    pub user: String,
    pub username: String,
    pub client: ClientInfo,
    /// The relayed address (as bound; the advertised one differs behind a 1:1 NAT); a dual
    /// allocation's IPv4 one.
    pub relay: Option<SocketAddr>,
    /// What it relays: `udp`, or `tcp` for a TCP allocation (RFC 6062).
    pub relay_transport: Transport,
    /// Every relayed address: two for a dual allocation (RFC 8656 §7.2), IPv4 first.
    pub relays: Vec<SocketAddr>,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
    pub permissions: Vec<IpAddr>,
    pub channels: Vec<ChannelInfo>,
    pub to_peer: TrafficInfo,
    pub to_client: TrafficInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub transport: Transport,
    pub address: SocketAddr,
    pub server: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    pub number: u16,
    pub peer: SocketAddr,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TrafficInfo {
    pub packets: u64,
    pub bytes: u64,
}

impl AllocationInfo {
    /// `spliced`: what its TCP splices relayed besides (RFC 6062), which the core does not see.
    pub fn new(
        worker: usize,
        core: &Server,
        allocation: &Allocation,
        spliced: Option<Traffic>,
    ) -> Self {
        let mut traffic = allocation.traffic();
        if let Some(spliced) = spliced {
            traffic += spliced;
        }
        AllocationInfo {
            id: format_id(worker, allocation.id()),
            user: crate::auth::user_id(allocation.username()).to_owned(),
            username: allocation.username().to_string(),
            client: ClientInfo {
                transport: allocation.tuple().transport,
                address: allocation.tuple().client,
                server: allocation.tuple().server,
            },
            relay: allocation.relayed(),
            relay_transport: if allocation.is_tcp() {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            relays: allocation.relayed_addresses().collect(),
            created: core.unix_time_of(allocation.created()),
            expires: core.unix_time_of(allocation.expires()),
            permissions: allocation.permissions().iter().map(|p| p.ip).collect(),
            channels: allocation
                .channels()
                .iter()
                .map(|c| ChannelInfo {
                    number: c.number,
                    peer: c.peer,
                })
                .collect(),
            to_peer: TrafficInfo {
                packets: traffic.to_peer_packets,
                bytes: traffic.to_peer_bytes,
            },
            to_client: TrafficInfo {
                packets: traffic.to_client_packets,
                bytes: traffic.to_client_bytes,
            },
        }
    }
}

/// What one worker says about its allocations for `/api/v1/status` and `/metrics`: its
/// counters and a count of its allocations, taken at one moment.
#[derive(Debug, Clone, Default)]
pub struct WorkerSummary {
    pub counters: WorkerCounters,
    /// Allocations with a relay socket (those the allocation list shows), by client transport
    /// in [`TRANSPORTS`] order.
    pub by_transport: [u64; 3],
    /// The same allocations by relay family: IPv4, IPv6 (a dual allocation counts in both).
    pub by_family: [u64; 2],
    /// The distinct user ids of those allocations, sorted (when asked for).
    pub users: Option<Vec<Box<str>>>,
}

/// The client transports, in the order [`WorkerSummary::by_transport`] counts them.
pub const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

impl WorkerSummary {
    /// Counts the allocations of `core` that have a relay socket. Control path: one pass over
    /// the allocations, allocating nothing but the sorted list of user ids when `users`.
    pub fn of(core: &Server, counters: WorkerCounters, users: bool) -> Self {
        let mut summary = WorkerSummary {
            counters,
            ..WorkerSummary::default()
        };
        let mut ids: Vec<&str> = Vec::new();
        for allocation in core.allocations() {
            if allocation.relayed().is_none() {
                continue;
            }
            summary.by_transport[transport_index(allocation.tuple().transport)] += 1;
            for relay in allocation.relayed_addresses() {
                summary.by_family[usize::from(relay.is_ipv6())] += 1;
            }
            if users {
                ids.push(crate::auth::user_id(allocation.username()));
            }
        }
        if users {
            ids.sort_unstable();
            ids.dedup();
            summary.users = Some(ids.into_iter().map(Box::from).collect());
        }
        summary
    }
}

/// Which allocations a page of `/api/v1/allocations` asks a worker for.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Only this user id's.
    pub user: Option<String>,
    /// Only those after this id (the previous page's last), in id order.
    pub after: Option<(usize, AllocationId)>,
    /// At most this many.
    pub limit: usize,
}

/// A worker's part of a page: its first `limit` allocations that match, in id order.
#[derive(Debug, Clone, Default)]
pub struct WorkerPage {
    pub allocations: Vec<AllocationInfo>,
    /// More allocations of this worker match after the last one given.
    pub more: bool,
}

impl WorkerPage {
    /// The allocations of worker `worker`'s `core` that `request` asks for, with what
    /// `spliced` says the TCP splices of each relayed. Control path: a pass over the
    /// allocations, copying out at most `request.limit` of them.
    pub fn of(
        worker: usize,
        core: &Server,
        request: &PageRequest,
        spliced: impl Fn(AllocationId) -> Option<Traffic>,
    ) -> Self {
        let mut page = WorkerPage::default();
        let after = match request.after {
            Some((w, _)) if w > worker => return page,
            Some((w, id)) if w == worker => Some(id),
            _ => None,
        };
        // The core lists its allocations by slot index, which is id order.
        let matching = core.allocations().filter(|a| {
            a.relayed().is_some()
                && after.is_none_or(|after| a.id() > after)
                && request
                    .user
                    .as_deref()
                    .is_none_or(|user| crate::auth::user_id(a.username()) == user)
        });
        for allocation in matching {
            if page.allocations.len() == request.limit {
                page.more = true;
                break;
            }
            page.allocations.push(AllocationInfo::new(
                worker,
                core,
                allocation,
                spliced(allocation.id()),
            ));
        }
        page
    }
}

/// `<worker>.<index>.<generation>`.
pub fn format_id(worker: usize, allocation: AllocationId) -> String {
    format!("{worker}.{allocation}")
}

/// The inverse of [`format_id`].
pub fn parse_id(id: &str) -> Option<(usize, AllocationId)> {
    let mut parts = id.split('.');
    let worker = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((worker, AllocationId::from_parts(index, generation)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = AllocationId::from_parts(7, 3);
        assert_eq!(format_id(1, id), "1.7.3");
        assert_eq!(parse_id("1.7.3"), Some((1, id)));
        for bad in ["", "1", "1.7", "1.7.3.4", "a.7.3", "1.-7.3"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
