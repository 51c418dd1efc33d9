//! The configuration file: TOML parsed into a typed, validated [`Config`].
//!
//! [`Config::from_toml`] does the work and is what tests call; [`Config::load`] adds reading the
//! file. Every error names the offending key (`relay.ports`, `listen[1].address`, ...).
//!
//! This file owns [`Config`] itself, its entry points and its defaults. The rest: `sections.rs`
//! (the typed sections), `raw.rs` (the keys as written), `validate.rs` (raw to typed),
//! `units.rs` (bandwidth, port ranges, durations), `text.rs` (values written as strings),
//! `error.rs` ([`ConfigError`]), `redact.rs` (secrets kept out of `Debug`), `reload.rs` (what a
//! reload applies and what needs a restart, key by key), `tests.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

mod error;
mod raw;
mod redact;
pub mod reload;
mod sections;
mod text;
mod units;
mod validate;

/// A core concept ([`crate::turn::Transport`]), named here too because listeners have one.
pub use crate::turn::Transport;
pub use error::ConfigError;
pub use redact::redact_url;
pub use sections::{
    Auth, Http, Limits, Listen, Log, Offload, Peers, Redis, RedisSchema, Relay, TlsFiles, User,
    UserCredential,
};
pub(crate) use text::parse_key;
pub use units::{Bandwidth, PortRange};

use error::{key_path, syntax_error};
use raw::RawConfig;

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
        Listen::new(Transport::Udp, address),
        Listen::new(Transport::Tcp, address),
    ]
}

#[cfg(test)]
mod tests;
