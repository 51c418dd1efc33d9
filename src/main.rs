//! The `turnpike` command: serve, check a configuration, issue REST API credentials, and
//! administer the shared Redis store.

mod admin;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use turnpike::auth::redis::{Health, Layout, RedisStore};
use turnpike::auth::rest_password;
use turnpike::config::{Config, redact_url};
use turnpike::net::{Node, NodeCounters};

#[derive(Parser)]
#[command(name = "turnpike", version, about = "A STUN/TURN server for WebRTC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TURNPIKE_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a configuration file; exit non-zero with the reason if it is not valid.
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print time-limited TURN REST API credentials as JSON, ready for `iceServers`.
    Credentials {
        /// Shared secret (default: the first of `[auth] secrets` in --config).
        #[arg(long, env = "TURNPIKE_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Configuration file to take the secret from.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// User id appended to the username (`<expiry>:<user>`).
        #[arg(long)]
        user: Option<String>,
        /// How long the credentials are valid, e.g. "1h", "30m".
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// TURN/STUN URI to include in `urls` (repeatable).
        #[arg(long = "uri")]
        uris: Vec<String>,
    },
    /// TURN REST API secrets in the shared Redis store.
    Secret {
        #[command(subcommand)]
        command: admin::SecretCommand,
        #[command(flatten)]
        store: admin::StoreArgs,
    },
    /// Users and their limits in the shared Redis store.
    User {
        #[command(subcommand)]
        command: admin::UserCommand,
        #[command(flatten)]
        store: admin::StoreArgs,
    },
    /// Revoke a TURN REST API username before it expires: every node closes its allocations
    /// and refuses its refreshes.
    Revoke {
        username: String,
        #[command(flatten)]
        store: admin::StoreArgs,
    },
}

#[derive(clap::Args)]
struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (overridden by RUST_LOG).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log } => serve(&config, &log),
        Command::CheckConfig { config } => Config::load(&config)
            .map(|_| println!("{}: ok", config.display()))
            .map_err(Into::into),
        Command::Credentials {
            secret,
            config,
            user,
            ttl,
            uris,
        } => credentials(secret, config, user, ttl, uris),
        Command::Secret { command, store } => admin::secret(&store, command),
        Command::User { command, store } => admin::user(&store, command),
        Command::Revoke { username, store } => admin::revoke(&store, &username),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("turnpike: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(path: &std::path::Path, log: &LogArgs) -> anyhow::Result<()> {
    init_logging(log);
    let config = Config::load(path)?;
    raise_file_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
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
    let mut node = Node::start(
        &config,
        redis.as_ref().map(|(store, _, _)| store.clone()),
        &http_address,
    )?;
    if let (Some(listener), Some(settings)) = (http, &config.http) {
        let api = Arc::new(turnpike::http::Api {
            token: settings.token.clone(),
            ice_urls: settings.ice_urls.clone(),
            config_secrets: config.auth.secrets.clone(),
            redis: redis
                .as_ref()
                .map(|(store, client, layout)| turnpike::http::RedisAccess {
                    store: store.clone(),
                    client: client.clone(),
                    layout: layout.clone(),
                }),
        });
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        tracing::info!(transport = "http", address = %http_address[0], "listening");
        runtime.spawn(async move {
            if let Err(error) = turnpike::http::serve(listener, api).await {
                tracing::error!(%error, "the HTTP API stopped");
            }
        });
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
        workers = node_workers(&config),
        "ready"
    );
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    break;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping");
                    break;
                }
                _ = usr1.recv() => log_counters(&node.counters(), redis_health(store.as_deref())),
            }
        }
        Ok::<_, std::io::Error>(())
    })?;
    log_counters(&node.counters(), redis_health(store.as_deref()));
    node.shutdown();
    Ok(())
}

/// The Redis store's state for the counters line: "none" without `[redis]`.
fn redis_health(store: Option<&RedisStore>) -> &'static str {
    match store.map(|s| s.health(turnpike::auth::redis::unix_now())) {
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
        rate_limited = core.rate_limited,
        quota_rejected = core.quota_rejected,
        capacity_rejected = core.capacity_rejected,
        tcp_connections = counters.tcp_connections,
        tcp_rejected = counters.workers.tcp_rejected,
        stream_timeouts = counters.workers.stream_timeouts,
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

fn node_workers(config: &Config) -> usize {
    match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

fn credentials(
    secret: Option<String>,
    config: Option<PathBuf>,
    user: Option<String>,
    ttl: Duration,
    uris: Vec<String>,
) -> anyhow::Result<()> {
    let secret = match (secret, config) {
        (Some(secret), _) => secret,
        (None, Some(path)) => {
            let config = Config::load(&path)?;
            match config.auth.secrets.into_iter().next() {
                Some(secret) => secret,
                None => bail!("{}: auth.secrets is empty", path.display()),
            }
        }
        (None, None) => bail!("no secret: pass --secret, set TURNPIKE_SECRET or give --config"),
    };
    if secret.is_empty() {
        bail!("the secret is empty");
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let expiry = (now + ttl).as_secs();
    let username = match user {
        Some(user) if user.is_empty() => bail!("--user is empty"),
        Some(user) => format!("{expiry}:{user}"),
        None => expiry.to_string(),
    };
    let credential = rest_password(secret.as_bytes(), &username);
    let json = serde_json::json!({
        "username": username,
        "credential": credential,
        "ttl": ttl.as_secs(),
        "urls": uris,
    });
    println!("{json}");
    Ok(())
}
