//! The typed, validated sections a [`Config`](super::Config) is made of: `[log]`, `[http]`,
//! `[redis]`, `[limits]`, the listeners and `[tls]`, `[relay]`, `[auth]` and its users,
//! `[peers]`; their defaults, and `Debug` impls that never show a secret.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::redact::{Redacted, RedactedList, redact_url};
use super::text::ParseText;
use super::units::{Bandwidth, PortRange};
use crate::turn::Transport;

/// Logging (`[log]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// Level or filter (`tracing_subscriber::EnvFilter` syntax); RUST_LOG and --log-level win.
    pub level: String,
    /// Replace usernames and client/peer addresses in allocation logs by stable hashes.
    pub redact: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_owned(),
            redact: false,
        }
    }
}

/// The HTTP API (`[http]`): credentials for app backends.
#[derive(Clone, PartialEq, Eq)]
pub struct Http {
    pub address: SocketAddr,
    /// Bearer token every API request must carry. `None` (a loopback `address` only): the
    /// server makes one at start and prints the dashboard URL with it.
    pub token: Option<String>,
    /// The URIs put in the `iceServers` the credential API returns.
    pub ice_urls: Vec<String>,
    /// Serve `/metrics` without the token.
    pub public_metrics: bool,
    /// Open HTTP connections at once; over it a new connection is closed at accept (after
    /// closing, if there is one, the oldest connection that has not sent a request yet).
    pub max_connections: usize,
    /// Open HTTP connections from one source (an IPv4 address, an IPv6 /64).
    pub max_connections_per_source: usize,
}

impl Http {
    /// Default `max-connections`: the API's clients are a few app backends, a scraper, probes
    /// and a dashboard; 256 leaves them ample room and costs a few MB and 256 descriptors at
    /// most.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    /// Default `max-connections-per-source`: one source fills at most an eighth of the default
    /// cap.
    pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 32;
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("address", &self.address)
            .field("token", &Redacted)
            .field("ice_urls", &self.ice_urls)
            .field("public_metrics", &self.public_metrics)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .finish()
    }
}

/// Where users, secrets, overrides and revocations are shared between nodes (`[redis]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Redis {
    /// `redis://[:password@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// Prefix of turnpike's keys (schema "turnpike"; also of its event channel and revocations
    /// in schema "coturn").
    pub prefix: String,
    pub schema: RedisSchema,
    /// How long credentials from the last snapshot keep authenticating while Redis is
    /// unreachable; after that, new requests that need them get 500.
    pub stale_for: Duration,
    /// This node's name in the cluster registry; `None`: host name and first listener.
    pub node_id: Option<String>,
    /// How long a cluster quota lease outlives its node's last renewal: a crashed node's
    /// allocations stop counting after this.
    pub lease_time: Duration,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("schema", &self.schema)
            .field("stale_for", &self.stale_for)
            .field("node_id", &self.node_id)
            .field("lease_time", &self.lease_time)
            .finish()
    }
}

/// The key layout in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisSchema {
    /// turnpike's own layout (README, "Redis layout").
    Turnpike,
    /// coturn's layout, read as coturn's `turnadmin` writes it.
    Coturn,
}

/// Quotas and abuse limits (`[limits]`). A zero count or rate means "no limit".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Allocations one user may hold on this node (REST usernames count as their user-id).
    pub user_allocations: u32,
    /// Allocations on this node; 0 = bounded only by ports and memory.
    pub total_allocations: u32,
    /// Relayed bits per second per allocation, both directions together; 0 = unlimited.
    pub allocation_bandwidth: Bandwidth,
    /// Relayed bits per second over all of one user's allocations on this node.
    pub user_bandwidth: Bandwidth,
    pub permissions_per_allocation: u32,
    pub channels_per_allocation: u32,
    /// TCP and TLS client connections on this node.
    pub max_tcp_connections: u32,
    /// TCP and TLS client connections from one IPv4 address or IPv6 /64 on this node; 0 = no
    /// cap. A value above `max_tcp_connections` is allowed and means that one.
    pub max_tcp_connections_per_source: u32,
    /// How long a TCP/TLS client without an allocation may go without a complete message
    /// (also bounds the TLS handshake).
    pub stream_idle_timeout: Duration,
    /// Answers per second per source (IPv4 address, IPv6 /64) to requests without valid
    /// credentials over UDP, once its burst is used; 0 = no per-source limit.
    pub unauthenticated_rate: u32,
    /// Answers a source may get at once (its bucket); each request from it that authenticates
    /// gives one back. At least 1.
    pub unauthenticated_burst: u32,
    /// Answers per second over the whole node to sources none of whose requests has
    /// authenticated in the last 10 minutes (burst: one second, or `unauthenticated_burst`
    /// if larger); 0 = no node-wide limit.
    pub unauthenticated_node_rate: u32,
}

/// The core's budget for unauthenticated answers, from `[limits] unauthenticated-*` (here, so
/// that the core never reads the configuration).
impl crate::turn::ReflectionBudget {
    pub fn from_limits(limits: &Limits) -> Self {
        crate::turn::ReflectionBudget {
            source_rate: limits.unauthenticated_rate,
            source_burst: limits.unauthenticated_burst,
            node_rate: limits.unauthenticated_node_rate,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            user_allocations: 10,
            total_allocations: 0,
            allocation_bandwidth: Bandwidth::UNLIMITED,
            user_bandwidth: Bandwidth::UNLIMITED,
            permissions_per_allocation: 64,
            channels_per_allocation: 64,
            max_tcp_connections: 10_000,
            max_tcp_connections_per_source: 256,
            stream_idle_timeout: Duration::from_secs(10),
            unauthenticated_rate: 20,
            unauthenticated_burst: 2000,
            unauthenticated_node_rate: 10_000,
        }
    }
}

/// One listening socket for client traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub address: SocketAddr,
    /// `proxy-protocol = true` (TCP and TLS only): every connection must open with a PROXY
    /// protocol header (version 1 or 2) naming the real client, and may come only from
    /// `proxy-from`, the balancers' addresses. `None`: connections are the clients'.
    pub proxy_from: Option<Vec<IpNet>>,
}

impl Listen {
    /// A listener without the PROXY protocol.
    pub fn new(transport: Transport, address: SocketAddr) -> Listen {
        Listen {
            transport,
            address,
            proxy_from: None,
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.transport, self.address)
    }
}

/// PEM files for the TLS listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// Relay sockets: where they bind, what is advertised, how long allocations live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// IPv4 address relay sockets bind to; `None` means the default route's source
    /// address.
    pub address: Option<Ipv4Addr>,
    /// IPv6 address relay sockets bind to; `None` means no IPv6 relaying.
    pub address_v6: Option<Ipv6Addr>,
    /// Advertised in XOR-RELAYED-ADDRESS instead of `address` (server behind a 1:1 NAT).
    pub public_address: Option<Ipv4Addr>,
    pub ports: PortRange,
    /// Allocation lifetime when the client asks for none; at most `max_lifetime`.
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// Whether channel traffic of UDP clients is relayed by the kernel fast path.
    pub offload: Offload,
    /// Whether TCP allocations (RFC 6062) are granted; off by default.
    pub tcp: bool,
}

/// `[relay] offload`: whether the kernel fast path (an eBPF program at TC ingress) relays
/// the ChannelData of UDP clients and their peers' datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    /// Use it when the program loads and attaches; else relay in user space, saying why.
    #[default]
    Auto,
    /// Never load it.
    Off,
    /// Refuse to start without it.
    On,
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Offload::Auto => "auto",
            Offload::Off => "off",
            Offload::On => "on",
        })
    }
}

impl ParseText for Offload {
    fn parse_text(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Offload::Auto),
            "off" => Ok(Offload::Off),
            "on" => Ok(Offload::On),
            _ => Err(format!(
                "invalid value {:?}, expected \"auto\", \"off\" or \"on\"",
                text.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// Credentials: TURN REST API secrets and static users.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    /// Shared secrets of the TURN REST API; never empty strings.
    pub secrets: Vec<String>,
    /// How long a NONCE stays valid; at least one second.
    pub nonce_lifetime: Duration,
    /// How far in the future a TURN REST API username's expiry may lie (by this server's
    /// clock); further is refused like a wrong password. 1 s to
    /// [`MAX_MAX_REST_TTL`](super::MAX_MAX_REST_TTL).
    pub max_rest_ttl: Duration,
    /// Static users; names are unique and non-empty.
    pub users: Vec<User>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("secrets", &RedactedList(self.secrets.len()))
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("max_rest_ttl", &self.max_rest_ttl)
            .field("users", &self.users)
            .finish()
    }
}

/// A static user.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub credential: UserCredential,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("credential", &self.credential)
            .finish()
    }
}

/// How a static user's long-term key is given.
#[derive(Clone, PartialEq, Eq)]
pub enum UserCredential {
    /// The plain password; the key is MD5(name:realm:password).
    Password(String),
    /// The keys themselves, so that the password need not be stored: MD5(name:realm:password)
    /// written as 32 hex digits (`key`), and optionally SHA-256(name:realm:password) as 64
    /// (`sha256-key`); without it the user can use the MD5 password algorithm only.
    Key {
        md5: [u8; 16],
        sha256: Option<[u8; 32]>,
    },
}

impl fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserCredential::Password(_) => f.debug_tuple("Password").field(&Redacted).finish(),
            UserCredential::Key { sha256, .. } => f
                .debug_struct("Key")
                .field("md5", &Redacted)
                .field("sha256", &sha256.map(|_| Redacted))
                .finish(),
        }
    }
}

/// Which peer addresses the relay may talk to, on top of the built-in list of refused ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers {
    /// Ranges permitted even though the built-in list refuses them.
    pub allow: Vec<IpNet>,
    /// Ranges always refused; beats `allow`.
    pub deny: Vec<IpNet>,
}
