//! What the configuration comes to for a worker's core: its settings and its peer policy
//! (at start and on every reload).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use crate::config::Config;
use crate::turn::{CoreConfig, HostAddresses, PeerPolicy, Quota};

use super::BoundListener;

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
        tcp_relay: config.relay.tcp,
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
