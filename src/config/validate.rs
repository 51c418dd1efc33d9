//! From the file as written to a [`Config`](super::Config): each section's values checked, every
//! refusal a [`ConfigError`](super::ConfigError) that names its key.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::error::ConfigError;
use super::raw::{RawAuth, RawConfig, RawHttp, RawLimits, RawListen, RawLog, RawRedis, RawRelay};
use super::redact::redact_url;
use super::sections::{
    Auth, Http, Limits, Listen, Log, Offload, Peers, Redis, RedisSchema, Relay, TlsFiles, User,
    UserCredential,
};
use super::text::{ParseText, parse_key};
use super::units::check_duration;
use super::{
    Config, DEFAULT_LIFETIME, DEFAULT_MAX_LIFETIME, DEFAULT_MAX_REST_TTL, DEFAULT_NONCE_LIFETIME,
    DEFAULT_PORTS, DEFAULT_REALM, DEFAULT_SOFTWARE, MAX_MAX_REST_TTL, default_listeners,
};
use crate::turn::Transport;

/// Longest accepted REALM and SOFTWARE value, in bytes (RFC 8489 §14.9, §14.14).
const MAX_TEXT_ATTRIBUTE_BYTES: usize = 763;
/// Longest accepted user name, in bytes (USERNAME is fewer than 509 bytes, RFC 8489 §14.3).
const MAX_USER_NAME_BYTES: usize = 508;
const MAX_WORKERS: usize = 1024;

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

/// Shortest bearer token accepted: a guessable token would hand out credentials.
const MIN_TOKEN_LEN: usize = 16;

impl RawHttp {
    fn validate(self) -> Result<Http, ConfigError> {
        let address = self
            .address
            .map_or(SocketAddr::from(([127, 0, 0, 1], 9641)), |a| a.0);
        let token = match self.token {
            Some(token) => Some(token),
            // Only this machine can reach a loopback API: a token made at start and printed
            // once (the dashboard URL) is as safe as one in the file.
            None if address.ip().is_loopback() => None,
            None => {
                return Err(ConfigError::invalid(
                    "http.token",
                    format!(
                        "is required when http.address ({address}) is not a loopback address: the API issues and revokes credentials (generate one with `openssl rand -hex 32`)"
                    ),
                ));
            }
        };
        if let Some(token) = &token
            && (token.len() < MIN_TOKEN_LEN || token.bytes().any(|b| !b.is_ascii_graphic()))
        {
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

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
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
                .enumerate()
                .map(|(i, l)| l.validate(i))
                .collect::<Result<_, _>>()?,
        };
        check_listeners(&listen)?;
        let tls = self.tls.map(|tls| TlsFiles {
            certificate: tls.certificate,
            private_key: tls.private_key,
        });
        check_tls(&listen, tls.as_ref())?;

        let relay = self.relay.validate()?;
        if relay.tcp && workers > crate::turn::MAX_TCP_RELAY_WORKERS {
            return Err(ConfigError::invalid(
                "workers",
                format!(
                    "{workers} is more than the {} a TCP relay ([relay] tcp) can route \
                     ConnectionBinds to (a CONNECTION-ID names its worker in one byte)",
                    crate::turn::MAX_TCP_RELAY_WORKERS
                ),
            ));
        }

        Ok(Config {
            realm,
            software,
            workers,
            listen,
            tls,
            relay,
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

/// The most ranges `proxy-from` may list: a handful of balancers' subnets is the use; a list
/// of thousands is a mistake (it is searched on every accept).
const MAX_PROXY_RANGES: usize = 256;

impl RawListen {
    fn validate(self, i: usize) -> Result<Listen, ConfigError> {
        let key = |name: &str| format!("listen[{i}].{name}");
        let proxy_from = match (self.proxy_protocol, self.proxy_from) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ConfigError::invalid(
                    key("proxy-from"),
                    "set, but proxy-protocol is not true; add proxy-protocol = true or remove proxy-from",
                ));
            }
            (true, _) if self.transport == Transport::Udp => {
                return Err(ConfigError::invalid(
                    key("proxy-protocol"),
                    "the PROXY protocol is for tcp and tls listeners, not udp",
                ));
            }
            (true, None) => {
                return Err(ConfigError::invalid(
                    key("proxy-from"),
                    "required with proxy-protocol = true: the addresses or ranges of the balancers allowed to send the header (e.g. [\"10.0.0.0/8\"])",
                ));
            }
            (true, Some(texts)) => {
                if texts.is_empty() {
                    return Err(ConfigError::invalid(
                        key("proxy-from"),
                        "is empty: with proxy-protocol = true it must name the balancers allowed to send the header",
                    ));
                }
                if texts.len() > MAX_PROXY_RANGES {
                    return Err(ConfigError::invalid(
                        key("proxy-from"),
                        format!(
                            "lists {} ranges; the maximum is {MAX_PROXY_RANGES}",
                            texts.len()
                        ),
                    ));
                }
                Some(parse_ranges(&key("proxy-from"), &texts)?)
            }
        };
        Ok(Listen {
            transport: self.transport,
            address: self.address.0,
            proxy_from,
        })
    }
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
                            "{ip} is not a unicast address; omit the key to use the source address of the default route"
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
            tcp: self.tcp.unwrap_or(false),
        })
    }
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
            let sha256 = raw
                .sha256_key
                .map(|key| {
                    crate::auth::parse_sha256_key_hex(&key).ok_or_else(|| {
                        ConfigError::invalid(
                            format!("{path}.sha256-key"),
                            format!(
                                "expected 64 hex digits (SHA-256 of name:realm:password), got {} characters",
                                key.chars().count()
                            ),
                        )
                    })
                })
                .transpose()?;
            let credential = match (raw.password, raw.key) {
                (Some(_), _) if sha256.is_some() => {
                    return Err(ConfigError::invalid(
                        format!("{path}.sha256-key"),
                        "goes with `key`: with `password` the SHA-256 key is derived from it",
                    ));
                }
                (Some(password), None) => {
                    if password.is_empty() {
                        return Err(ConfigError::invalid(
                            format!("{path}.password"),
                            "must not be empty",
                        ));
                    }
                    UserCredential::Password(password)
                }
                (None, Some(key)) => UserCredential::Key {
                    md5: parse_key(&key)
                        .map_err(|problem| ConfigError::invalid(format!("{path}.key"), problem))?,
                    sha256,
                },
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
