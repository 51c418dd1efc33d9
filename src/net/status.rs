//! What workers publish for the status API: plain snapshots, copied out of the cores on the
//! workers' own timer, so the HTTP side never touches a core.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::config::Transport;
use crate::turn::{Allocation, AllocationId, Server};

/// One allocation as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationInfo {
    /// `<worker>.<index>.<generation>`: names the allocation for `DELETE`.
    pub id: String,
    /// The user-id part of the username (what quotas count).
    pub user: String,
    pub username: String,
    pub client: ClientInfo,
    /// The relayed address (as bound; the advertised one differs behind a 1:1 NAT).
    pub relay: Option<SocketAddr>,
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
    pub fn new(worker: usize, core: &Server, allocation: &Allocation) -> Self {
        let traffic = allocation.traffic;
        AllocationInfo {
            id: format_id(worker, allocation.id),
            user: crate::auth::user_id(&allocation.username).to_owned(),
            username: allocation.username.to_string(),
            client: ClientInfo {
                transport: allocation.tuple.transport,
                address: allocation.tuple.client,
                server: allocation.tuple.server,
            },
            relay: allocation.relayed,
            created: core.unix_time_of(allocation.created),
            expires: core.unix_time_of(allocation.expires),
            permissions: allocation.permissions.iter().map(|p| p.ip).collect(),
            channels: allocation
                .channels
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
