//! The file as written: every key the configuration may hold, with its TOML type (serde,
//! `deny_unknown_fields`, kebab-case). `validate.rs` checks the values and builds a `Config`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::sections::{Offload, RedisSchema};
use super::text::Text;
use super::units::{Bandwidth, PortRange};
use crate::turn::Transport;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    pub(super) realm: Option<String>,
    pub(super) software: Option<String>,
    pub(super) workers: Option<usize>,
    pub(super) listen: Option<Vec<RawListen>>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) relay: RawRelay,
    #[serde(default)]
    pub(super) auth: RawAuth,
    #[serde(default)]
    pub(super) peers: RawPeers,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) redis: Option<RawRedis>,
    pub(super) http: Option<RawHttp>,
    pub(super) drain_timeout: Option<Text<Duration>>,
    #[serde(default)]
    pub(super) log: RawLog,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) redact: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHttp {
    pub(super) address: Option<Text<SocketAddr>>,
    pub(super) token: Option<String>,
    #[serde(default)]
    pub(super) ice_urls: Vec<String>,
    #[serde(default)]
    pub(super) public_metrics: bool,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_source: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRedis {
    pub(super) url: String,
    pub(super) prefix: Option<String>,
    pub(super) schema: Option<RedisSchema>,
    pub(super) stale_for: Option<Text<Duration>>,
    pub(super) node_id: Option<String>,
    pub(super) lease_time: Option<Text<Duration>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimits {
    pub(super) user_allocations: Option<u32>,
    pub(super) total_allocations: Option<u32>,
    pub(super) allocation_bandwidth: Option<Text<Bandwidth>>,
    pub(super) user_bandwidth: Option<Text<Bandwidth>>,
    pub(super) permissions_per_allocation: Option<u32>,
    pub(super) channels_per_allocation: Option<u32>,
    pub(super) max_tcp_connections: Option<u32>,
    pub(super) max_tcp_connections_per_source: Option<u32>,
    pub(super) stream_idle_timeout: Option<Text<Duration>>,
    pub(super) unauthenticated_rate: Option<u32>,
    pub(super) unauthenticated_burst: Option<u32>,
    pub(super) unauthenticated_node_rate: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawListen {
    pub(super) transport: Transport,
    pub(super) address: Text<SocketAddr>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
    pub(super) proxy_from: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTls {
    pub(super) certificate: PathBuf,
    pub(super) private_key: PathBuf,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRelay {
    pub(super) address: Option<Text<Ipv4Addr>>,
    pub(super) address_v6: Option<Text<Ipv6Addr>>,
    pub(super) public_address: Option<Text<Ipv4Addr>>,
    pub(super) ports: Option<Text<PortRange>>,
    pub(super) default_lifetime: Option<Text<Duration>>,
    pub(super) max_lifetime: Option<Text<Duration>>,
    pub(super) offload: Option<Text<Offload>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) secrets: Vec<String>,
    pub(super) nonce_lifetime: Option<Text<Duration>>,
    pub(super) max_rest_ttl: Option<Text<Duration>>,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) password: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPeers {
    // Strings, parsed in `validate`: toml gives array elements no span of their own, so an
    // error raised while deserializing one could only name the whole array.
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
}
