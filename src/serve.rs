//! `turnpike serve`: loads the configuration, starts the node (and the HTTP API and the
//! cluster when configured), and runs until SIGTERM/SIGINT, applying SIGHUP reloads, logging
//! the counters on SIGUSR1, and draining before it exits. systemd notifications and the
//! open-file limit are handled here too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use turnpike::auth::redis::{Health, Layout, RedisStore};
use turnpike::auth::{Credentials, StaticCredentials};
use turnpike::clock::unix_now;
use turnpike::config::{Config, redact_url};
use turnpike::net::{Node, NodeCounters, NodeHandle};
use turnpike::notify::Notifier;

use crate::{LogArgs, LogFormat};

/// Changes the log level of the running process (reload); `None` when RUST_LOG or
/// --log-level pinned it.
type LevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(log: &LogArgs, configured: &str) -> Option<LevelHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, pinned) = match (
        tracing_subscriber::EnvFilter::try_from_default_env(),
        &log.log_level,
    ) {
        (Ok(filter), _) => (filter, true),
        (Err(_), Some(level)) => (tracing_subscriber::EnvFilter::new(level), true),
        (Err(_), None) => (tracing_subscriber::EnvFilter::new(configured), false),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let text = matches!(log.log_format, LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_writer(turnpike::logbuf::Stderr));
    let json = matches!(log.log_format, LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(turnpike::logbuf::Stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    (!pinned).then_some(handle)
}

pub(crate) fn serve(path: &std::path::Path, log: &LogArgs) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    let level = init_logging(log, &config.log.level);
    raise_file_limit();
    let notifier = turnpike_notify();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    // Handlers first: a SIGHUP or SIGTERM right after READY must not meet the default action
    // (which would end the process).
    let mut signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::user_defined1())?,
            signal(SignalKind::hangup())?,
        )
    };
    let redis = match &config.redis {
        Some(settings) => {
            let client = redis::Client::open(settings.url.as_str())
                .with_context(|| format!("redis.url: {}", redact_url(&settings.url)))?;
            let store = Arc::new(RedisStore::new(settings.stale_for));
            tracing::info!(
                url = %redact_url(&settings.url),
                schema = ?settings.schema,
                "using Redis for shared credentials"
            );
            Some((store, client, Layout::new(settings, &config.realm)))
        }
        None => None,
    };
    let http = match &config.http {
        Some(settings) => {
            let listener = std::net::TcpListener::bind(settings.address)
                .with_context(|| format!("http.address ({}): cannot bind", settings.address))?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    let http_address = match &http {
        Some(listener) => vec![listener.local_addr()?],
        None => Vec::new(),
    };
    let credentials = Arc::new(Credentials::new(
        StaticCredentials::new(&config.auth, &config.realm),
        redis.as_ref().map(|(store, _, _)| store.clone()),
    ));
    let mut node = Node::start(&config, credentials, &http_address)?;
    let handle = node.handle();
    let node_id = config
        .redis
        .as_ref()
        .and_then(|r| r.node_id.clone())
        .unwrap_or_else(|| node.default_node_id());
    // Used while `[http] token` is unset, which only a loopback address allows: the same
    // token for the life of the process, reloads included, so an open dashboard keeps working.
    let made_token = {
        let mut bytes = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let mut api = None;
    if let (Some(listener), Some(settings)) = (http, &config.http) {
        let shared = Arc::new(turnpike::http::Api::new(
            api_settings(&config, settings, &made_token),
            redis
                .as_ref()
                .map(|(store, client, layout)| turnpike::http::RedisAccess {
                    store: store.clone(),
                    client: client.clone(),
                    layout: layout.clone(),
                }),
            handle.clone(),
            node_id.clone(),
        ));
        api = Some(shared.clone());
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        tracing::info!(transport = "http", address = %http_address[0], "listening");
        runtime.spawn(turnpike::http::serve(listener, shared));
    }
    if let Some(cluster) = node.take_cluster() {
        runtime.spawn(cluster);
    }
    let store = redis.as_ref().map(|(store, _, _)| store.clone());
    if let Some((store, client, layout)) = redis {
        let commander = node.commander();
        runtime.spawn(turnpike::auth::redis::run(
            store,
            client,
            layout,
            move |names| commander.revoke(names),
        ));
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        realm = %config.realm,
        node = %node_id,
        workers = node_workers(&config),
        "ready"
    );
    notifier.ready();
    let dashboard = config.http.as_ref().map(|http| {
        let made = http.token.is_none().then_some(made_token.as_str());
        (http_address[0], made)
    });
    print!(
        "{}",
        crate::startup::summary(&config, &node.listeners(), node.relay_v4(), dashboard)
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
    if let Some(interval) = notifier.watchdog_interval() {
        let notifier = notifier.clone();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        });
    }
    runtime.block_on(async {
        let (term, int, usr1, hup) = &mut signals;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    break;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: draining");
                    break;
                }
                _ = usr1.recv() => log_counters(&counters_now(&handle).await, redis_health(store.as_deref())),
                _ = hup.recv() => {
                    notifier.reloading();
                    reload(path, &mut config, &handle, api.as_deref(), level.as_ref(), &made_token);
                    notifier.ready();
                }
            }
        }
        notifier.stopping();
        drain(&handle, config.drain_timeout, term, int).await;
        // The final counters: everything the workers have done.
        log_counters(&counters_now(&handle).await, redis_health(store.as_deref()));
        Ok::<_, std::io::Error>(())
    })?;
    node.shutdown();
    Ok(())
}

/// The node's counters as the workers answer now (each counts everything it had done when
/// asked); a worker that does not answer within `ANSWER_TIMEOUT` is named in a warning and
/// counted as it last published.
async fn counters_now(handle: &NodeHandle) -> NodeCounters {
    match handle.counters_now().await {
        Ok(counters) => counters,
        Err((unanswered, counters)) => {
            tracing::warn!(
                workers = ?unanswered.workers,
                "{unanswered}: their counters are as last published (at most 100 ms before)"
            );
            counters
        }
    }
}

/// Stops granting allocations and waits until the existing ones have ended, `timeout` has
/// passed, or a second signal comes.
async fn drain(
    handle: &NodeHandle,
    timeout: Duration,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    handle.set_draining(true);
    let deadline = tokio::time::sleep_until(tokio::time::Instant::now() + timeout);
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut reported = None;
    let mut remaining = None;
    loop {
        tokio::select! {
            // Asked, not read from what the workers last published: each worker answers once
            // it has handled everything that came before, and an Allocate it handles after
            // the question sees `draining` (set above) and is refused. So a zero is the truth.
            answer = async {
                poll.tick().await;
                handle.counters_now().await
            } => {
                let (count, unanswered) = match answer {
                    Ok(counters) => (counters.workers.allocations, None),
                    Err((unanswered, counters)) => (counters.workers.allocations, Some(unanswered)),
                };
                remaining = Some(count);
                if reported != Some((count, unanswered.is_some())) {
                    match &unanswered {
                        None => tracing::info!(
                            allocations = count,
                            "draining: no new allocations; waiting for these to end"
                        ),
                        Some(unanswered) => tracing::warn!(
                            allocations = count,
                            workers = ?unanswered.workers,
                            "draining: {unanswered}; waiting for them and for these allocations to end"
                        ),
                    }
                    reported = Some((count, unanswered.is_some()));
                }
                if count == 0 && unanswered.is_none() {
                    tracing::info!("drained: no allocation left");
                    return;
                }
            }
            _ = &mut deadline => {
                tracing::warn!(allocations = remaining, "drain-timeout reached: stopping with allocations left");
                return;
            }
            _ = term.recv() => {
                tracing::warn!("second signal: stopping now");
                return;
            }
            _ = int.recv() => {
                tracing::warn!("second signal: stopping now");
                return;
            }
        }
    }
}

/// SIGHUP: re-reads the configuration and applies it to the running node; a configuration
/// that does not validate is rejected and the old one keeps running. What is applied and what
/// needs a restart is decided key by key in one place, [`turnpike::config::reload`]; `config`
/// becomes what runs (keys needing a restart keep their running values).
fn reload(
    path: &std::path::Path,
    config: &mut Config,
    handle: &NodeHandle,
    api: Option<&turnpike::http::Api>,
    level: Option<&LevelHandle>,
    made_token: &str,
) {
    // What the status API and /metrics say of the reload, recorded before the log line says it.
    let record_rejection = |error: String| {
        if let Some(api) = api {
            api.reloads.rejected(unix_now(), error);
        }
    };
    let fresh = match Config::load(path) {
        Ok(fresh) => fresh,
        Err(error) => {
            record_rejection(error.to_string());
            tracing::error!(%error, "reload rejected: the configuration does not validate; the old one keeps running");
            return;
        }
    };
    let plan = turnpike::config::reload::plan(config, &fresh);
    let mut restart: Vec<String> = plan.restart.iter().map(|key| (*key).to_owned()).collect();
    match handle.reload(&plan.config) {
        Ok(also) => restart.extend(also),
        Err(error) => {
            record_rejection(error.to_string());
            tracing::error!(%error, "reload rejected; the old configuration keeps running");
            return;
        }
    }
    let running = plan.config;
    if let Some(level) = level
        && running.log.level != config.log.level
        && let Err(error) = level.reload(tracing_subscriber::EnvFilter::new(&running.log.level))
    {
        tracing::warn!(%error, "could not change the log level");
    }
    if let (Some(api), Some(http)) = (api, &running.http) {
        api.settings
            .store(Arc::new(api_settings(&running, http, made_token)));
    }
    // Recorded before the log line, so that whoever reads the line finds the status to match.
    if let Some(api) = api {
        api.reloads.applied(unix_now(), restart.clone());
    }
    if restart.is_empty() {
        tracing::info!(applied = ?plan.applied, "configuration reloaded");
    } else {
        tracing::warn!(applied = ?plan.applied, needs_restart = ?restart, "configuration reloaded; these changes take effect only after a restart");
    }
    *config = running;
}

/// The HTTP API's reloadable settings, with `made_token` as the token while `[http] token` is
/// unset. Its connections may take at most a quarter of the open-file limit in force (read
/// again at each reload), so that it can never starve the relay of descriptors.
fn api_settings(
    config: &Config,
    http: &turnpike::config::Http,
    made_token: &str,
) -> turnpike::http::ApiSettings {
    let open_files = open_file_limit();
    let budget = usize::try_from(open_files / 4).unwrap_or(usize::MAX).max(1);
    let total = if http.max_connections > budget {
        tracing::warn!(
            max_connections = http.max_connections,
            open_file_limit = open_files,
            using = budget,
            "http.max-connections is more than a quarter of the open-file limit; lowered so that the relay keeps its descriptors"
        );
        budget
    } else {
        http.max_connections
    };
    turnpike::http::ApiSettings {
        token: http.token.clone().unwrap_or_else(|| made_token.to_owned()),
        ice_urls: http.ice_urls.clone(),
        config_secrets: config.auth.secrets.clone(),
        max_rest_ttl: config.auth.max_rest_ttl,
        public_metrics: http.public_metrics,
        connections: turnpike::http::ConnectionLimits {
            total,
            per_source: http.max_connections_per_source.min(total),
        },
    }
}

/// The service manager's notification socket (a no-op outside systemd).
fn turnpike_notify() -> Notifier {
    Notifier::from_env()
}

/// The Redis store's state for the counters line: "none" without `[redis]`.
fn redis_health(store: Option<&RedisStore>) -> &'static str {
    match store.map(|s| s.health(turnpike::clock::unix_now())) {
        None => "none",
        Some(Health::Starting) => "starting",
        Some(Health::Connected) => "connected",
        Some(Health::Stale) => "stale",
        Some(Health::Expired) => "expired",
    }
}

/// One log line with every counter of the node (on SIGUSR1, and when stopping).
fn log_counters(counters: &NodeCounters, redis: &str) {
    let core = &counters.workers.core;
    tracing::info!(
        redis,
        allocations = counters.workers.allocations,
        allocations_created = core.allocations_created,
        allocations_expired = core.allocations_expired,
        allocations_deleted = core.allocations_deleted,
        binding_requests = core.binding_requests,
        error_responses = core.error_responses,
        auth_failures = core.auth_failures,
        stale_nonces = core.stale_nonces,
        malformed = core.malformed,
        to_peer_packets = core.to_peer_packets,
        to_peer_bytes = core.to_peer_bytes,
        to_client_packets = core.to_client_packets,
        to_client_bytes = core.to_client_bytes,
        dropped_no_allocation = core.dropped_no_allocation,
        dropped_no_permission = core.dropped_no_permission,
        dropped_policy = core.dropped_policy,
        dropped_bandwidth = core.dropped_bandwidth,
        dropped_too_large = core.dropped_too_large,
        dropped_stream_full = counters.workers.dropped_stream_full,
        dropped_send_failed = counters.workers.dropped_send_failed,
        rate_limited = core.rate_limited,
        rate_limited_node = core.rate_limited_node,
        quota_rejected = core.quota_rejected,
        capacity_rejected = core.capacity_rejected,
        tcp_connections = counters.tcp_connections,
        tcp_rejected = counters.workers.tcp_rejected,
        tcp_rejected_per_source = counters.workers.tcp_rejected_per_source,
        stream_timeouts = counters.workers.stream_timeouts,
        stream_write_timeouts = counters.workers.stream_write_timeouts,
        proxy_refused = counters.workers.proxy_refused,
        tcp_relay_opened = core.tcp_connections_opened,
        tcp_relay_failed = core.tcp_connections_failed,
        tcp_relay_bound = core.tcp_connections_bound,
        tcp_relay_bind_timeouts = core.tcp_bind_timeouts,
        tcp_relay_to_peer_bytes = core.tcp_to_peer_bytes,
        tcp_relay_to_client_bytes = core.tcp_to_client_bytes,
        offload_carried = counters.offload_carried,
        "stats"
    );
}

/// Raises the soft limit on open files to the hard limit: every TCP client and every relay
/// socket is a descriptor, and the usual soft limit of 1024 would cap the server far below
/// `max-tcp-connections`.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = limit.rlim_cur, "could not raise the open-file limit");
            }
        }
    }
}

/// The soft limit on open files in force (1024, Linux's usual one, if it cannot be read).
fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

fn node_workers(config: &Config) -> usize {
    match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}
