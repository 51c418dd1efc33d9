//! The configuration file: TOML parsed into a typed, validated [`Config`].
//!
//! [`Config::from_toml`] does the work and is what tests call; [`Config::load`] adds reading the
//! file. Every error names the offending key (`relay.ports`, `listen[1].address`, ...).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Longest accepted REALM and SOFTWARE value, in bytes (RFC 8489 §14.9, §14.14).
const MAX_TEXT_ATTRIBUTE_BYTES: usize = 763;
/// Longest accepted user name, in bytes (USERNAME is fewer than 509 bytes, RFC 8489 §14.3).
const MAX_USER_NAME_BYTES: usize = 508;
const MAX_WORKERS: usize = 1024;
const MIN_DURATION: Duration = Duration::from_secs(1);
/// Longest accepted duration, for every key: far past any sensible setting, and short enough
/// that adding it to the clock cannot overflow (a lifetime of 300,000,000,000 years did, and
/// killed a worker thread on the first Allocate).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

const DEFAULT_REALM: &str = "turnpike.local";
const DEFAULT_SOFTWARE: &str = "turnpike";
const DEFAULT_PORT: u16 = 3478;
const DEFAULT_PORTS: PortRange = PortRange {
    first: 49152,
    last: 65535,
};
const DEFAULT_LIFETIME: Duration = Duration::from_secs(10 * 60);
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(60 * 60);
const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// `[auth] max-rest-ttl`: one day, the lifetime draft-uberti-behave-turn-rest recommends.
pub const DEFAULT_MAX_REST_TTL: Duration = Duration::from_secs(24 * 3600);
/// The largest `[auth] max-rest-ttl` accepted: a credential that outlives this is no longer
/// "time-limited" in any useful sense.
pub const MAX_MAX_REST_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The whole server configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// REALM sent to clients and used in long-term credentials.
    pub realm: String,
    /// SOFTWARE attribute value; empty means the attribute is not sent.
    pub software: String,
    /// Number of workers; 0 means one per core.
    pub workers: usize,
    /// Listeners; never empty, no two alike.
    pub listen: Vec<Listen>,
    /// Certificate and key; present exactly when a TLS listener exists.
    pub tls: Option<TlsFiles>,
    pub relay: Relay,
    pub auth: Auth,
    pub peers: Peers,
    pub limits: Limits,
    /// Shared credential store; `None` runs on the configuration alone.
    pub redis: Option<Redis>,
    /// The HTTP API; `None` serves no HTTP.
    pub http: Option<Http>,
    /// On SIGTERM, how long existing allocations may go on before the process exits.
    pub drain_timeout: Duration,
    pub log: Log,
}

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
    /// Bearer token every API request must carry.
    pub token: String,
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

/// A Redis URL with any password replaced, fit for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}<redacted>{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
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

/// A data rate in bits per second, written like `"2 Mbps"`, `"500 kbps"`, `"1 Gbps"`; 0 means
/// unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

impl Bandwidth {
    pub const UNLIMITED: Bandwidth = Bandwidth(0);

    /// Bits per second, or `None` when unlimited.
    pub fn bits_per_second(self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

impl std::str::FromStr for Bandwidth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Bandwidth::parse_text(text)
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("unlimited"),
            bps => write!(f, "{bps} bps"),
        }
    }
}

/// The transport of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// One listening socket for client traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listen {
    pub transport: Transport,
    pub address: SocketAddr,
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
    /// IPv4 address relay sockets bind to; `None` means the address of the default-route
    /// interface.
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

/// An inclusive range of ports, written `"49152-65535"`. `1 <= first <= last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
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
    /// clock); further is refused like a wrong password. 1 s to [`MAX_MAX_REST_TTL`].
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
    /// The key itself, MD5(name:realm:password), written as 32 hex digits.
    Key([u8; 16]),
}

impl fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserCredential::Password(_) => f.debug_tuple("Password").field(&Redacted).finish(),
            UserCredential::Key(_) => f.debug_tuple("Key").field(&Redacted).finish(),
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

/// Prints `<redacted>` in place of a secret.
#[derive(Clone, Copy)]
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Prints a list of `n` redacted secrets.
struct RedactedList(usize);

impl fmt::Debug for RedactedList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(std::iter::repeat_n(Redacted, self.0))
            .finish()
    }
}

/// Why a configuration was refused. Its `Display` is one line naming the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The text is not valid TOML.
    Syntax {
        /// The file, when loaded from one.
        file: Option<PathBuf>,
        /// 1-based line and column of the error.
        line: usize,
        column: usize,
        message: String,
    },
    /// A key is unknown or its value is of the wrong type or refused.
    Invalid {
        /// The file, when loaded from one.
        file: Option<PathBuf>,
        /// Path of the key, e.g. `listen[1].address`; empty when unknown.
        key: String,
        problem: String,
    },
}

impl ConfigError {
    /// The path of the offending key, e.g. `relay.ports`, when the error concerns one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            _ => None,
        }
    }

    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: None,
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            ConfigError::Syntax { file, .. } | ConfigError::Invalid { file, .. } => {
                *file = Some(path.to_owned());
            }
            ConfigError::Read { .. } => {}
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Syntax {
                file,
                line,
                column,
                message,
            } => {
                if let Some(file) = file {
                    write!(f, "{}: ", file.display())?;
                }
                write!(
                    f,
                    "TOML syntax error at line {line}, column {column}: {message}"
                )
            }
            ConfigError::Invalid { file, key, problem } => {
                if let Some(file) = file {
                    write!(f, "{}: ", file.display())?;
                }
                if !key.is_empty() {
                    write!(f, "{key}: ")?;
                }
                f.write_str(problem)
            }
        }
    }
}

impl Config {
    /// Parses and validates a configuration; absent keys take their defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let document = DeTable::parse(text).map_err(|error| syntax_error(text, &error))?;
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(document.clone())).map_err(
            |error| {
                let key = error
                    .span()
                    .map(|span| key_path(document.get_ref(), span))
                    .unwrap_or_default();
                ConfigError::invalid(key, error.message())
            },
        )?;
        raw.validate()
    }

    /// Reads, parses and validates the file at `path`; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|error| error.in_file(path))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: DEFAULT_REALM.to_owned(),
            software: DEFAULT_SOFTWARE.to_owned(),
            workers: 0,
            listen: default_listeners(),
            tls: None,
            relay: Relay {
                address: None,
                address_v6: None,
                public_address: None,
                ports: DEFAULT_PORTS,
                default_lifetime: DEFAULT_LIFETIME,
                max_lifetime: DEFAULT_MAX_LIFETIME,
                offload: Offload::Auto,
            },
            auth: Auth {
                secrets: Vec::new(),
                nonce_lifetime: DEFAULT_NONCE_LIFETIME,
                max_rest_ttl: DEFAULT_MAX_REST_TTL,
                users: Vec::new(),
            },
            peers: Peers {
                allow: Vec::new(),
                deny: Vec::new(),
            },
            limits: Limits::default(),
            redis: None,
            http: None,
            drain_timeout: Duration::from_secs(60),
            log: Log::default(),
        }
    }
}

fn default_listeners() -> Vec<Listen> {
    let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT);
    vec![
        Listen {
            transport: Transport::Udp,
            address,
        },
        Listen {
            transport: Transport::Tcp,
            address,
        },
    ]
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start.min(text.len()));
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax {
        file: None,
        line,
        column,
        message: error.message().replace('\n', " "),
    }
}

/// The path (`auth.users[0].key`) of the narrowest key or value whose span holds `target`.
fn key_path(root: &DeTable<'_>, target: Range<usize>) -> String {
    let mut best = None;
    visit_table(root, "", &target, &mut best);
    best.map(|(_, path)| path).unwrap_or_default()
}

fn visit_table(
    table: &DeTable<'_>,
    prefix: &str,
    target: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        consider(key.span(), &path, target, best);
        visit_value(value, &path, target, best);
    }
}

fn visit_value(
    value: &Spanned<DeValue<'_>>,
    path: &str,
    target: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    consider(value.span(), path, target, best);
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, path, target, best),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                visit_value(item, &format!("{path}[{index}]"), target, best);
            }
        }
        _ => {}
    }
}

fn consider(
    span: Range<usize>,
    path: &str,
    target: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    let holds = span.start <= target.start && target.end <= span.end;
    let narrower = best.as_ref().is_none_or(|(len, _)| span.len() <= *len);
    if holds && narrower {
        *best = Some((span.len(), path.to_owned()));
    }
}

// The file as written; `validate` turns it into a `Config`.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    realm: Option<String>,
    software: Option<String>,
    workers: Option<usize>,
    listen: Option<Vec<RawListen>>,
    tls: Option<RawTls>,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    peers: RawPeers,
    #[serde(default)]
    limits: RawLimits,
    redis: Option<RawRedis>,
    http: Option<RawHttp>,
    drain_timeout: Option<Text<Duration>>,
    #[serde(default)]
    log: RawLog,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLog {
    level: Option<String>,
    redact: Option<bool>,
}

impl RawLog {
    fn validate(self) -> Result<Log, ConfigError> {
        let level = self.level.unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "invalid level or filter {level:?}: {e}; expected e.g. \"info\" or \"turnpike=debug,info\""
                ),
            ));
        }
        Ok(Log {
            level,
            redact: self.redact.unwrap_or(false),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHttp {
    address: Option<Text<SocketAddr>>,
    token: Option<String>,
    #[serde(default)]
    ice_urls: Vec<String>,
    #[serde(default)]
    public_metrics: bool,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
}

/// Shortest bearer token accepted: a guessable token would hand out credentials.
const MIN_TOKEN_LEN: usize = 16;

impl RawHttp {
    fn validate(self) -> Result<Http, ConfigError> {
        let address = self
            .address
            .map_or(SocketAddr::from(([127, 0, 0, 1], 9641)), |a| a.0);
        let Some(token) = self.token else {
            return Err(ConfigError::invalid(
                "http.token",
                "is required: the API issues and revokes credentials (generate one with `openssl rand -hex 32`)",
            ));
        };
        if token.len() < MIN_TOKEN_LEN || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "http.token",
                format!(
                    "must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces"
                ),
            ));
        }
        for (i, url) in self.ice_urls.iter().enumerate() {
            let known = ["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            if !known || url.len() < 7 {
                return Err(ConfigError::invalid(
                    format!("http.ice-urls[{i}]"),
                    format!(
                        "{url:?} is not a STUN/TURN URI, expected e.g. \"turn:turn.example.com:3478?transport=udp\""
                    ),
                ));
            }
        }
        let max_connections = self
            .max_connections
            .unwrap_or(Http::DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::invalid(
                "http.max-connections",
                "must be at least 1 (0 would refuse every connection, the operator's too)",
            ));
        }
        let max_connections_per_source = self
            .max_connections_per_source
            .unwrap_or(Http::DEFAULT_MAX_CONNECTIONS_PER_SOURCE.min(max_connections));
        if max_connections_per_source == 0 {
            return Err(ConfigError::invalid(
                "http.max-connections-per-source",
                "must be at least 1 (0 would refuse every connection, the operator's too)",
            ));
        }
        if max_connections_per_source > max_connections {
            return Err(ConfigError::invalid(
                "http.max-connections-per-source",
                format!(
                    "{max_connections_per_source} is more than http.max-connections ({max_connections})"
                ),
            ));
        }
        Ok(Http {
            address,
            token,
            ice_urls: self.ice_urls,
            public_metrics: self.public_metrics,
            max_connections,
            max_connections_per_source,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRedis {
    url: String,
    prefix: Option<String>,
    schema: Option<RedisSchema>,
    stale_for: Option<Text<Duration>>,
    node_id: Option<String>,
    lease_time: Option<Text<Duration>>,
}

impl RawRedis {
    fn validate(self) -> Result<Redis, ConfigError> {
        let scheme_ok = self.url.starts_with("redis://") || self.url.starts_with("rediss://");
        if !scheme_ok || redis::IntoConnectionInfo::into_connection_info(self.url.as_str()).is_err()
        {
            return Err(ConfigError::invalid(
                "redis.url",
                format!(
                    "invalid Redis URL {:?}, expected e.g. \"redis://127.0.0.1:6379/0\" or \"rediss://:password@host:6380/0\"",
                    redact_url(&self.url)
                ),
            ));
        }
        let prefix = self.prefix.unwrap_or_else(|| "turnpike".to_owned());
        if prefix.is_empty() || prefix.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(ConfigError::invalid(
                "redis.prefix",
                "must be non-empty, without spaces or control characters",
            ));
        }
        let stale_for = self.stale_for.map_or(Duration::from_secs(300), |d| d.0);
        check_duration("redis.stale-for", stale_for)?;
        let lease_time = self.lease_time.map_or(Duration::from_secs(30), |d| d.0);
        check_duration("redis.lease-time", lease_time)?;
        if lease_time < Duration::from_secs(3) {
            return Err(ConfigError::invalid(
                "redis.lease-time",
                "must be at least 3s: leases are renewed every second",
            ));
        }
        if let Some(id) = &self.node_id {
            let valid =
                !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                return Err(ConfigError::invalid(
                    "redis.node-id",
                    "must be 1 to 128 printable ASCII characters without spaces",
                ));
            }
        }
        Ok(Redis {
            url: self.url,
            prefix,
            schema: self.schema.unwrap_or(RedisSchema::Turnpike),
            stale_for,
            node_id: self.node_id,
            lease_time,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    user_allocations: Option<u32>,
    total_allocations: Option<u32>,
    allocation_bandwidth: Option<Text<Bandwidth>>,
    user_bandwidth: Option<Text<Bandwidth>>,
    permissions_per_allocation: Option<u32>,
    channels_per_allocation: Option<u32>,
    max_tcp_connections: Option<u32>,
    max_tcp_connections_per_source: Option<u32>,
    stream_idle_timeout: Option<Text<Duration>>,
    unauthenticated_rate: Option<u32>,
    unauthenticated_burst: Option<u32>,
    unauthenticated_node_rate: Option<u32>,
}

impl RawLimits {
    fn validate(self) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let stream_idle_timeout = self
            .stream_idle_timeout
            .map_or(defaults.stream_idle_timeout, |d| d.0);
        check_duration("limits.stream-idle-timeout", stream_idle_timeout)?;
        let at_least_one = |key: &str, value: Option<u32>, default: u32| match value {
            Some(0) => Err(ConfigError::invalid(
                key,
                "must be at least 1 (a TURN allocation cannot work without one)",
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        Ok(Limits {
            user_allocations: self.user_allocations.unwrap_or(defaults.user_allocations),
            total_allocations: self.total_allocations.unwrap_or(defaults.total_allocations),
            allocation_bandwidth: self
                .allocation_bandwidth
                .map_or(defaults.allocation_bandwidth, |b| b.0),
            user_bandwidth: self.user_bandwidth.map_or(defaults.user_bandwidth, |b| b.0),
            permissions_per_allocation: at_least_one(
                "limits.permissions-per-allocation",
                self.permissions_per_allocation,
                defaults.permissions_per_allocation,
            )?,
            channels_per_allocation: self
                .channels_per_allocation
                .unwrap_or(defaults.channels_per_allocation),
            max_tcp_connections: self
                .max_tcp_connections
                .unwrap_or(defaults.max_tcp_connections),
            max_tcp_connections_per_source: self
                .max_tcp_connections_per_source
                .unwrap_or(defaults.max_tcp_connections_per_source),
            stream_idle_timeout,
            unauthenticated_rate: self
                .unauthenticated_rate
                .unwrap_or(defaults.unauthenticated_rate),
            unauthenticated_burst: match self.unauthenticated_burst {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "limits.unauthenticated-burst",
                        "must be at least 1 (a source could never be answered; \
                         unauthenticated-rate = 0 lifts the limit)",
                    ));
                }
                Some(n) => n,
                None => defaults.unauthenticated_burst,
            },
            unauthenticated_node_rate: self
                .unauthenticated_node_rate
                .unwrap_or(defaults.unauthenticated_node_rate),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawListen {
    transport: Transport,
    address: Text<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTls {
    certificate: PathBuf,
    private_key: PathBuf,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRelay {
    address: Option<Text<Ipv4Addr>>,
    address_v6: Option<Text<Ipv6Addr>>,
    public_address: Option<Text<Ipv4Addr>>,
    ports: Option<Text<PortRange>>,
    default_lifetime: Option<Text<Duration>>,
    max_lifetime: Option<Text<Duration>>,
    offload: Option<Text<Offload>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAuth {
    #[serde(default)]
    secrets: Vec<String>,
    nonce_lifetime: Option<Text<Duration>>,
    max_rest_ttl: Option<Text<Duration>>,
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUser {
    name: String,
    password: Option<String>,
    key: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPeers {
    // Strings, parsed in `validate`: toml gives array elements no span of their own, so an
    // error raised while deserializing one could only name the whole array.
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// A value written as a TOML string, parsed with an error message that quotes it.
struct Text<T>(T);

trait ParseText: Sized {
    fn parse_text(text: &str) -> Result<Self, String>;
}

impl<'de, T: ParseText> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        T::parse_text(&text)
            .map(Text)
            .map_err(serde::de::Error::custom)
    }
}

impl ParseText for SocketAddr {
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("invalid socket address {text:?}, expected e.g. \"0.0.0.0:3478\""))
    }
}

impl ParseText for Ipv4Addr {
    fn parse_text(text: &str) -> Result<Self, String> {
        if text.parse::<Ipv6Addr>().is_ok() {
            return Err(format!(
                "{text:?} is an IPv6 address; this key takes an IPv4 address"
            ));
        }
        text.parse()
            .map_err(|_| format!("invalid IPv4 address {text:?}"))
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

impl ParseText for Ipv6Addr {
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("invalid IPv6 address {text:?}"))
    }
}

impl ParseText for IpNet {
    fn parse_text(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(net.trunc());
        }
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("invalid IP range {text:?}, expected e.g. \"10.0.0.0/8\""))
    }
}

impl ParseText for Duration {
    fn parse_text(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text).map_err(|error| {
            format!("invalid duration {text:?} ({error}), expected e.g. \"30s\", \"10m\", \"1h\"")
        })
    }
}

impl ParseText for Bandwidth {
    fn parse_text(text: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid bandwidth {text:?}, expected e.g. \"2 Mbps\", \"500 kbps\", \"1 Gbps\" or \"0\" for unlimited"
            )
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: f64 = number.parse().map_err(|_| expected())?;
        let scale = match unit.trim() {
            "" if number == 0.0 => 1.0,
            "bps" => 1.0,
            "kbps" | "Kbps" => 1e3,
            "Mbps" => 1e6,
            "Gbps" => 1e9,
            _ => return Err(expected()),
        };
        let bits = number * scale;
        if !bits.is_finite() || bits > 1e12 {
            return Err(format!("{text:?} is more than the maximum of 1000 Gbps"));
        }
        if bits > 0.0 && bits < 8.0 {
            return Err(format!("{text:?} is less than one byte per second"));
        }
        Ok(Bandwidth(bits as u64))
    }
}

impl ParseText for PortRange {
    fn parse_text(text: &str) -> Result<Self, String> {
        let expected = || format!("invalid port range {text:?}, expected e.g. \"49152-65535\"");
        let (first, last) = text.split_once('-').ok_or_else(expected)?;
        let first: u16 = first.trim().parse().map_err(|_| expected())?;
        let last: u16 = last.trim().parse().map_err(|_| expected())?;
        if first == 0 {
            return Err("port 0 cannot be a relay port; start at 1 or above".to_owned());
        }
        if first > last {
            return Err(format!("start {first} is greater than end {last}"));
        }
        Ok(PortRange { first, last })
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let realm = self.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned());
        if realm.is_empty() {
            return Err(ConfigError::invalid("realm", "must not be empty"));
        }
        check_length("realm", &realm, MAX_TEXT_ATTRIBUTE_BYTES)?;
        let software = self.software.unwrap_or_else(|| DEFAULT_SOFTWARE.to_owned());
        check_length("software", &software, MAX_TEXT_ATTRIBUTE_BYTES)?;
        let workers = self.workers.unwrap_or(0);
        if workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "workers",
                format!(
                    "{workers} is more than the maximum of {MAX_WORKERS} (0 means one per core)"
                ),
            ));
        }

        let listen = match self.listen {
            None => default_listeners(),
            Some(raw) => raw
                .into_iter()
                .map(|l| Listen {
                    transport: l.transport,
                    address: l.address.0,
                })
                .collect(),
        };
        check_listeners(&listen)?;
        let tls = self.tls.map(|tls| TlsFiles {
            certificate: tls.certificate,
            private_key: tls.private_key,
        });
        check_tls(&listen, tls.as_ref())?;

        Ok(Config {
            realm,
            software,
            workers,
            listen,
            tls,
            relay: self.relay.validate()?,
            auth: self.auth.validate()?,
            peers: Peers {
                allow: parse_ranges("peers.allow", &self.peers.allow)?,
                deny: parse_ranges("peers.deny", &self.peers.deny)?,
            },
            limits: self.limits.validate()?,
            redis: self.redis.map(RawRedis::validate).transpose()?,
            http: self.http.map(RawHttp::validate).transpose()?,
            drain_timeout: match self.drain_timeout {
                Some(d) => {
                    check_duration("drain-timeout", d.0)?;
                    d.0
                }
                None => Duration::from_secs(60),
            },
            log: self.log.validate()?,
        })
    }
}

fn parse_ranges(key: &str, texts: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            IpNet::parse_text(text)
                .map_err(|problem| ConfigError::invalid(format!("{key}[{i}]"), problem))
        })
        .collect()
}

fn check_length(key: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    if value.len() > max {
        return Err(ConfigError::invalid(
            key,
            format!("is {} bytes long; the maximum is {max}", value.len()),
        ));
    }
    Ok(())
}

fn check_listeners(listen: &[Listen]) -> Result<(), ConfigError> {
    if listen.is_empty() {
        return Err(ConfigError::invalid(
            "listen",
            "at least one listener is required",
        ));
    }
    let uses_tcp = |t: Transport| matches!(t, Transport::Tcp | Transport::Tls);
    for (i, later) in listen.iter().enumerate() {
        for (j, earlier) in listen[..i].iter().enumerate() {
            // Port 0 asks the kernel for a free port: such listeners never clash.
            if later.address != earlier.address || later.address.port() == 0 {
                continue;
            }
            if later.transport == earlier.transport {
                return Err(ConfigError::invalid(
                    format!("listen[{i}]"),
                    format!("duplicate of listen[{j}] ({earlier})"),
                ));
            }
            if uses_tcp(later.transport) && uses_tcp(earlier.transport) {
                return Err(ConfigError::invalid(
                    format!("listen[{i}]"),
                    format!("{later} uses the same TCP port as listen[{j}] ({earlier})"),
                ));
            }
        }
    }
    Ok(())
}

fn check_tls(listen: &[Listen], tls: Option<&TlsFiles>) -> Result<(), ConfigError> {
    let first_tls = listen
        .iter()
        .enumerate()
        .find(|(_, l)| l.transport == Transport::Tls);
    match (first_tls, tls) {
        (Some((i, listener)), None) => Err(ConfigError::invalid(
            "tls",
            format!(
                "the [tls] section (certificate, private-key) is required by listen[{i}] ({listener})"
            ),
        )),
        (None, Some(_)) => Err(ConfigError::invalid(
            "tls",
            "set, but no listener has transport \"tls\"; add one or remove [tls]",
        )),
        (Some(_), Some(files)) => {
            if files.certificate.as_os_str().is_empty() {
                return Err(ConfigError::invalid("tls.certificate", "must not be empty"));
            }
            if files.private_key.as_os_str().is_empty() {
                return Err(ConfigError::invalid("tls.private-key", "must not be empty"));
            }
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

impl RawRelay {
    fn validate(self) -> Result<Relay, ConfigError> {
        let address = self.address.map(|a| a.0);
        let address_v6 = self.address_v6.map(|a| a.0);
        let public_address = self.public_address.map(|a| a.0);
        for (key, ip) in [
            ("relay.address", address),
            ("relay.public-address", public_address),
        ] {
            if let Some(ip) = ip {
                if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "{ip} is not a unicast address; omit the key to use the address of the default-route interface"
                        ),
                    ));
                }
            }
        }
        if let Some(ip) = address_v6 {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::invalid(
                    "relay.address-v6",
                    format!("{ip} is not a unicast address"),
                ));
            }
        }
        let default_lifetime = self.default_lifetime.map_or(DEFAULT_LIFETIME, |d| d.0);
        let max_lifetime = self.max_lifetime.map_or(DEFAULT_MAX_LIFETIME, |d| d.0);
        check_duration("relay.default-lifetime", default_lifetime)?;
        check_duration("relay.max-lifetime", max_lifetime)?;
        if default_lifetime > max_lifetime {
            return Err(ConfigError::invalid(
                "relay.default-lifetime",
                format!(
                    "{} is greater than relay.max-lifetime ({})",
                    humantime::format_duration(default_lifetime),
                    humantime::format_duration(max_lifetime),
                ),
            ));
        }
        Ok(Relay {
            address,
            address_v6,
            public_address,
            ports: self.ports.map_or(DEFAULT_PORTS, |p| p.0),
            default_lifetime,
            max_lifetime,
            offload: self.offload.map_or_else(Offload::default, |o| o.0),
        })
    }
}

fn check_duration(key: &str, duration: Duration) -> Result<(), ConfigError> {
    if duration < MIN_DURATION {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is shorter than the minimum of 1s",
                humantime::format_duration(duration)
            ),
        ));
    }
    if duration > MAX_DURATION {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is longer than the maximum of 365 days",
                humantime::format_duration(duration)
            ),
        ));
    }
    Ok(())
}

impl RawAuth {
    fn validate(self) -> Result<Auth, ConfigError> {
        for (i, secret) in self.secrets.iter().enumerate() {
            if secret.is_empty() {
                return Err(ConfigError::invalid(
                    format!("auth.secrets[{i}]"),
                    "must not be empty",
                ));
            }
        }
        let nonce_lifetime = self.nonce_lifetime.map_or(DEFAULT_NONCE_LIFETIME, |d| d.0);
        check_duration("auth.nonce-lifetime", nonce_lifetime)?;
        let max_rest_ttl = self.max_rest_ttl.map_or(DEFAULT_MAX_REST_TTL, |d| d.0);
        check_duration("auth.max-rest-ttl", max_rest_ttl)?;
        if max_rest_ttl > MAX_MAX_REST_TTL {
            return Err(ConfigError::invalid(
                "auth.max-rest-ttl",
                format!(
                    "{} is longer than the maximum of {} days",
                    humantime::format_duration(max_rest_ttl),
                    MAX_MAX_REST_TTL.as_secs() / 86_400
                ),
            ));
        }

        let mut users: Vec<User> = Vec::with_capacity(self.users.len());
        for (i, raw) in self.users.into_iter().enumerate() {
            let path = format!("auth.users[{i}]");
            if raw.name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    "must not be empty",
                ));
            }
            check_length(&format!("{path}.name"), &raw.name, MAX_USER_NAME_BYTES)?;
            if let Some(j) = users.iter().position(|u| u.name == raw.name) {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    format!("user {:?} is already defined by auth.users[{j}]", raw.name),
                ));
            }
            let credential = match (raw.password, raw.key) {
                (Some(password), None) => {
                    if password.is_empty() {
                        return Err(ConfigError::invalid(
                            format!("{path}.password"),
                            "must not be empty",
                        ));
                    }
                    UserCredential::Password(password)
                }
                (None, Some(key)) => UserCredential::Key(
                    parse_key(&key)
                        .map_err(|problem| ConfigError::invalid(format!("{path}.key"), problem))?,
                ),
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::invalid(
                        path,
                        "set exactly one of `password` and `key`",
                    ));
                }
            };
            users.push(User {
                name: raw.name,
                credential,
            });
        }
        Ok(Auth {
            secrets: self.secrets,
            nonce_lifetime,
            max_rest_ttl,
            users,
        })
    }
}

/// Parses a long-term key written as 32 hex digits.
pub(crate) fn parse_key(text: &str) -> Result<[u8; 16], String> {
    let problem = || {
        format!(
            "expected 32 hex digits (MD5 of name:realm:password), got {} characters",
            text.chars().count()
        )
    };
    let digits = text.as_bytes();
    if digits.len() != 32 {
        return Err(problem());
    }
    let mut key = [0u8; 16];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let high = hex_value(pair[0]);
        let low = hex_value(pair[1]);
        match (high, low) {
            (Some(high), Some(low)) => *byte = high << 4 | low,
            _ => return Err("contains a character that is not a hex digit".to_owned()),
        }
    }
    Ok(key)
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|v| v as u8)
}

#[cfg(test)]
mod tests;
