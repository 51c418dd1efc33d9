//! What a reload does with each key: the one place that compares the running configuration
//! with the file re-read on SIGHUP and decides, key by key, whether the change is applied to
//! the running server or needs a restart.
//!
//! [`plan`] destructures every section without `..`, so a field added to a section does not
//! compile until it has a decision here; `tests.rs` checks that the keys decided here are the
//! keys the file may hold (as the raw serde layer lists them), so a key added to the file
//! without a decision fails the suite.

use super::{Auth, Config, Http, Limits, Log, Peers, Redis, Relay, TlsFiles};

/// What a reload does when a key changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The running server takes the new value.
    Applied,
    /// The running server keeps the old value until it restarts.
    Restart,
}

/// The outcome of comparing the running configuration with a fresh one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reload {
    /// What the server runs from now on: the fresh configuration, except that every key
    /// needing a restart keeps its running value (so the next reload compares against what
    /// actually runs, and reports the same keys again until the process restarts).
    pub config: Config,
    /// Keys whose change is applied, e.g. `limits.allocation-bandwidth`.
    pub applied: Vec<&'static str>,
    /// Keys whose change waits for a restart, e.g. `relay.address-v6`.
    pub restart: Vec<&'static str>,
}

/// `key!(visit, name, Effect, running, fresh)` reports one key to `visit` and yields the value
/// to run: the fresh one when the change is applied, the running one when it needs a restart.
macro_rules! key {
    ($visit:ident, $name:literal, $effect:ident, $old:expr, $new:expr) => {{
        let (old, new) = (&$old, &$new);
        $visit($name, Effect::$effect, old != new);
        match Effect::$effect {
            Effect::Applied => new.clone(),
            Effect::Restart => old.clone(),
        }
    }};
}

/// Compares the running configuration with a fresh one, key by key.
pub fn plan(running: &Config, fresh: &Config) -> Reload {
    let (mut applied, mut restart) = (Vec::new(), Vec::new());
    let config = decide(running, fresh, &mut |key, effect, changed| {
        if changed {
            match effect {
                Effect::Applied => applied.push(key),
                Effect::Restart => restart.push(key),
            }
        }
    });
    Reload {
        config,
        applied,
        restart,
    }
}

/// Every key with its decision, in file order (for tests and documentation).
pub fn decisions() -> Vec<(&'static str, Effect)> {
    let mut all = Vec::new();
    let config = Config::default();
    decide(&config, &config, &mut |key, effect, _| {
        all.push((key, effect))
    });
    all
}

/// Visits every key with its decision and whether it changed, and builds the configuration to
/// run: the fresh value of an applied key, the running value of one that needs a restart.
fn decide(
    running: &Config,
    fresh: &Config,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Config {
    let Config {
        realm,
        software,
        workers,
        listen,
        tls,
        relay,
        auth,
        peers,
        limits,
        redis,
        http,
        drain_timeout,
        log,
    } = fresh;
    Config {
        realm: key!(visit, "realm", Applied, running.realm, *realm),
        software: key!(visit, "software", Applied, running.software, *software),
        // Workers are threads with their own sockets and allocations.
        workers: key!(visit, "workers", Restart, running.workers, *workers),
        // Added listeners are opened and removed ones closed.
        listen: key!(visit, "listen", Applied, running.listen, *listen),
        tls: decide_tls(running.tls.as_ref(), tls.as_ref(), visit),
        relay: decide_relay(&running.relay, relay, visit),
        auth: decide_auth(&running.auth, auth, visit),
        peers: decide_peers(&running.peers, peers, visit),
        limits: decide_limits(&running.limits, limits, visit),
        redis: decide_redis(running.redis.as_ref(), redis.as_ref(), visit),
        http: decide_http(running.http.as_ref(), http.as_ref(), visit),
        drain_timeout: key!(
            visit,
            "drain-timeout",
            Applied,
            running.drain_timeout,
            *drain_timeout
        ),
        log: decide_log(&running.log, log, visit),
    }
}

/// The certificate is read again at every reload (a renewed file at the same path is taken);
/// the keys reported are the paths.
fn decide_tls(
    running: Option<&TlsFiles>,
    fresh: Option<&TlsFiles>,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Option<TlsFiles> {
    visit("tls", Effect::Applied, running.is_some() != fresh.is_some());
    let absent = TlsFiles {
        certificate: Default::default(),
        private_key: Default::default(),
    };
    let (old, new) = both(running, fresh, &absent);
    let TlsFiles {
        certificate,
        private_key,
    } = new;
    let _ = key!(
        visit,
        "tls.certificate",
        Applied,
        old.certificate,
        *certificate
    );
    let _ = key!(
        visit,
        "tls.private-key",
        Applied,
        old.private_key,
        *private_key
    );
    fresh.cloned()
}

/// The two sides of an optional section, for comparing its keys: a key counts as changed
/// only when the section is present on both sides (adding or removing the section is reported
/// as the section's own key).
fn both<'a, T>(running: Option<&'a T>, fresh: Option<&'a T>, absent: &'a T) -> (&'a T, &'a T) {
    match (running, fresh) {
        (Some(old), Some(new)) => (old, new),
        (Some(one), None) | (None, Some(one)) => (one, one),
        (None, None) => (absent, absent),
    }
}

fn decide_relay(
    running: &Relay,
    fresh: &Relay,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Relay {
    let Relay {
        address,
        address_v6,
        public_address,
        ports,
        default_lifetime,
        max_lifetime,
        offload,
        tcp,
    } = fresh;
    Relay {
        // Each worker's relay sockets are bound on the addresses it started with.
        address: key!(visit, "relay.address", Restart, running.address, *address),
        address_v6: key!(
            visit,
            "relay.address-v6",
            Restart,
            running.address_v6,
            *address_v6
        ),
        public_address: key!(
            visit,
            "relay.public-address",
            Applied,
            running.public_address,
            *public_address
        ),
        ports: key!(visit, "relay.ports", Applied, running.ports, *ports),
        default_lifetime: key!(
            visit,
            "relay.default-lifetime",
            Applied,
            running.default_lifetime,
            *default_lifetime
        ),
        max_lifetime: key!(
            visit,
            "relay.max-lifetime",
            Applied,
            running.max_lifetime,
            *max_lifetime
        ),
        // The program is loaded and attached once, at start.
        offload: key!(visit, "relay.offload", Restart, running.offload, *offload),
        // Asked at each Allocate; TCP allocations made before a reload that turns it off
        // go on until they end.
        tcp: key!(visit, "relay.tcp", Applied, running.tcp, *tcp),
    }
}

fn decide_auth(
    running: &Auth,
    fresh: &Auth,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Auth {
    let Auth {
        secrets,
        nonce_lifetime,
        max_rest_ttl,
        users,
    } = fresh;
    let old = running;
    Auth {
        secrets: key!(visit, "auth.secrets", Applied, old.secrets, *secrets),
        nonce_lifetime: key!(
            visit,
            "auth.nonce-lifetime",
            Applied,
            old.nonce_lifetime,
            *nonce_lifetime
        ),
        max_rest_ttl: key!(
            visit,
            "auth.max-rest-ttl",
            Applied,
            old.max_rest_ttl,
            *max_rest_ttl
        ),
        users: key!(visit, "auth.users", Applied, old.users, *users),
    }
}

/// Permissions and channels the new policy refuses end at once.
fn decide_peers(
    running: &Peers,
    fresh: &Peers,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Peers {
    let Peers { allow, deny } = fresh;
    Peers {
        allow: key!(visit, "peers.allow", Applied, running.allow, *allow),
        deny: key!(visit, "peers.deny", Applied, running.deny, *deny),
    }
}

/// Every limit is applied; live allocations take a new `allocation-bandwidth`, except those
/// whose limit the credential store set.
fn decide_limits(
    running: &Limits,
    fresh: &Limits,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Limits {
    let Limits {
        user_allocations,
        total_allocations,
        allocation_bandwidth,
        user_bandwidth,
        permissions_per_allocation,
        channels_per_allocation,
        max_tcp_connections,
        max_tcp_connections_per_source,
        stream_idle_timeout,
        unauthenticated_rate,
        unauthenticated_burst,
        unauthenticated_node_rate,
    } = fresh;
    let old = running;
    Limits {
        user_allocations: key!(
            visit,
            "limits.user-allocations",
            Applied,
            old.user_allocations,
            *user_allocations
        ),
        total_allocations: key!(
            visit,
            "limits.total-allocations",
            Applied,
            old.total_allocations,
            *total_allocations
        ),
        allocation_bandwidth: key!(
            visit,
            "limits.allocation-bandwidth",
            Applied,
            old.allocation_bandwidth,
            *allocation_bandwidth
        ),
        user_bandwidth: key!(
            visit,
            "limits.user-bandwidth",
            Applied,
            old.user_bandwidth,
            *user_bandwidth
        ),
        permissions_per_allocation: key!(
            visit,
            "limits.permissions-per-allocation",
            Applied,
            old.permissions_per_allocation,
            *permissions_per_allocation
        ),
        channels_per_allocation: key!(
            visit,
            "limits.channels-per-allocation",
            Applied,
            old.channels_per_allocation,
            *channels_per_allocation
        ),
        max_tcp_connections: key!(
            visit,
            "limits.max-tcp-connections",
            Applied,
            old.max_tcp_connections,
            *max_tcp_connections
        ),
        max_tcp_connections_per_source: key!(
            visit,
            "limits.max-tcp-connections-per-source",
            Applied,
            old.max_tcp_connections_per_source,
            *max_tcp_connections_per_source
        ),
        stream_idle_timeout: key!(
            visit,
            "limits.stream-idle-timeout",
            Applied,
            old.stream_idle_timeout,
            *stream_idle_timeout
        ),
        unauthenticated_rate: key!(
            visit,
            "limits.unauthenticated-rate",
            Applied,
            old.unauthenticated_rate,
            *unauthenticated_rate
        ),
        unauthenticated_burst: key!(
            visit,
            "limits.unauthenticated-burst",
            Applied,
            old.unauthenticated_burst,
            *unauthenticated_burst
        ),
        unauthenticated_node_rate: key!(
            visit,
            "limits.unauthenticated-node-rate",
            Applied,
            old.unauthenticated_node_rate,
            *unauthenticated_node_rate
        ),
    }
}

/// The store connection, its key layout and the cluster lease are set up once: every key of
/// `[redis]` needs a restart, and so does adding or removing the section.
fn decide_redis(
    running: Option<&Redis>,
    fresh: Option<&Redis>,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Option<Redis> {
    visit(
        "redis",
        Effect::Restart,
        running.is_some() != fresh.is_some(),
    );
    let absent = Redis {
        url: String::new(),
        prefix: String::new(),
        schema: super::RedisSchema::Turnpike,
        stale_for: Default::default(),
        node_id: None,
        lease_time: Default::default(),
    };
    let (old, new) = both(running, fresh, &absent);
    let Redis {
        url,
        prefix,
        schema,
        stale_for,
        node_id,
        lease_time,
    } = new;
    let _ = key!(visit, "redis.url", Restart, old.url, *url);
    let _ = key!(visit, "redis.prefix", Restart, old.prefix, *prefix);
    let _ = key!(visit, "redis.schema", Restart, old.schema, *schema);
    let _ = key!(visit, "redis.stale-for", Restart, old.stale_for, *stale_for);
    let _ = key!(visit, "redis.node-id", Restart, old.node_id, *node_id);
    let _ = key!(
        visit,
        "redis.lease-time",
        Restart,
        old.lease_time,
        *lease_time
    );
    running.cloned()
}

/// The HTTP server is bound once: adding or removing `[http]`, or moving its address, needs a
/// restart; its other settings are applied.
fn decide_http(
    running: Option<&Http>,
    fresh: Option<&Http>,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Option<Http> {
    visit(
        "http",
        Effect::Restart,
        running.is_some() != fresh.is_some(),
    );
    let absent = Http {
        address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        token: None,
        ice_urls: Vec::new(),
        public_metrics: false,
        max_connections: 0,
        max_connections_per_source: 0,
    };
    let (old, new) = both(running, fresh, &absent);
    let Http {
        address,
        token,
        ice_urls,
        public_metrics,
        max_connections,
        max_connections_per_source,
    } = new;
    let kept = Http {
        address: key!(visit, "http.address", Restart, old.address, *address),
        token: key!(visit, "http.token", Applied, old.token, *token),
        ice_urls: key!(visit, "http.ice-urls", Applied, old.ice_urls, *ice_urls),
        public_metrics: key!(
            visit,
            "http.public-metrics",
            Applied,
            old.public_metrics,
            *public_metrics
        ),
        max_connections: key!(
            visit,
            "http.max-connections",
            Applied,
            old.max_connections,
            *max_connections
        ),
        max_connections_per_source: key!(
            visit,
            "http.max-connections-per-source",
            Applied,
            old.max_connections_per_source,
            *max_connections_per_source
        ),
    };
    // The section's presence needs a restart: the running one stays (or stays absent).
    running.map(|_| kept)
}

fn decide_log(
    running: &Log,
    fresh: &Log,
    visit: &mut dyn FnMut(&'static str, Effect, bool),
) -> Log {
    let Log { level, redact } = fresh;
    Log {
        level: key!(visit, "log.level", Applied, running.level, *level),
        redact: key!(visit, "log.redact", Applied, running.redact, *redact),
    }
}
