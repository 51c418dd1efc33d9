//! The `turnpike` command: serve, check a configuration, issue REST API credentials, probe a
//! TURN server, administer the shared Redis store, and (hidden) write its own man pages and
//! completions.

mod admin;
mod generate;
mod serve;
mod startup;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use turnpike::auth::rest_password;
use turnpike::config::Config;

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
    /// Validate a configuration file; exit non-zero with the reason if it is not valid. Also
    /// says what `[relay] offload` comes to on this machine (loading the kernel fast path and
    /// attaching it for a moment, which passes all traffic on, to find out); with
    /// `offload = "on"`, a fast path that cannot run is an error.
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
    /// Test a TURN server from this machine: for each turn:/turns: URI, a Binding, two
    /// authenticated allocations relaying datagrams to each other, round-trip times and loss,
    /// with the likely cause of each failure. Exit status 0 when all passed, 1 when a step
    /// failed, 2 for a bad command line.
    Probe(turnpike::probe::ProbeArgs),
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
    /// Write the man pages or shell completions (for packaging: see scripts/deb).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        artifact: generate::Artifact,
    },
}

#[derive(clap::Args)]
struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter; overrides `[log] level` (and RUST_LOG overrides both).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log } => serve::serve(&config, &log),
        Command::CheckConfig { config } => check_config(&config),
        Command::Credentials {
            secret,
            config,
            user,
            ttl,
            uris,
        } => credentials(secret, config, user, ttl, uris),
        Command::Probe(args) => return turnpike::probe::run(args),
        Command::Secret { command, store } => admin::secret(&store, command),
        Command::User { command, store } => admin::user(&store, command),
        Command::Revoke { username, store } => admin::revoke(&store, &username),
        Command::Generate { artifact } => generate::generate(artifact),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("turnpike: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: validates the file, says which allocations the relay addresses serve,
/// names the listeners that expect a PROXY protocol header and from whom, and says what `[relay] offload` will come to here (it loads and
/// attaches the program for a moment to find out, then detaches it).
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("{}: ok", path.display());
    println!("{}", relay_families(&config));
    for (i, listen) in config.listen.iter().enumerate() {
        if let Some(from) = &listen.proxy_from {
            let from: Vec<String> = from.iter().map(ToString::to_string).collect();
            println!(
                "listen[{i}] ({listen}): PROXY protocol: each connection must come from {} and open with a version 1 or 2 header naming the client",
                from.join(", ")
            );
        }
    }
    let streams = config
        .listen
        .iter()
        .any(|l| l.transport != turnpike::config::Transport::Udp);
    match (config.relay.tcp, streams) {
        (false, _) => println!("tcp relay: off: TCP allocations get 442"),
        (true, true) => println!(
            "tcp relay: on: TCP and TLS clients may allocate TCP relays (RFC 6062); open the relay ports for TCP too"
        ),
        (true, false) => println!(
            "tcp relay: on, but no TCP or TLS listener: TCP allocations need one (over UDP they get 400)"
        ),
    }
    let listeners: Vec<turnpike::net::BoundListener> = config
        .listen
        .iter()
        .map(|l| turnpike::net::BoundListener {
            transport: l.transport,
            address: l.address,
        })
        .collect();
    let relay_v4 = config
        .relay
        .address
        .or_else(turnpike::net::default_route_ipv4);
    let mode = config.relay.offload;
    match turnpike::net::OffloadState::start(mode, &listeners, relay_v4) {
        Ok(turnpike::net::OffloadState::Off) => {
            println!("offload: off: UDP channel traffic is relayed in user space");
        }
        Ok(turnpike::net::OffloadState::Active(fast_path)) => println!(
            "offload: {mode}: the kernel fast path will relay UDP channel traffic (attaches to {})",
            fast_path.interfaces().join(", ")
        ),
        Ok(turnpike::net::OffloadState::Unavailable(why)) => {
            println!(
                "offload: auto: relaying in user space: the kernel fast path cannot run: {why}"
            );
        }
        Err(why) => {
            anyhow::bail!("relay.offload = \"on\" but the kernel fast path cannot run here: {why}")
        }
    }
    Ok(())
}

/// What `check-config` says of the relay address families: which Allocates get which
/// relayed addresses (RFC 8656 §7.2).
fn relay_families(config: &Config) -> String {
    let v4 = config.relay.address.map_or_else(
        || "the default route's address".to_owned(),
        |a| a.to_string(),
    );
    match config.relay.address_v6 {
        Some(v6) => format!(
            "relay: IPv4 {v4}, IPv6 {v6}: IPv4, IPv6 and dual-stack allocations (ADDITIONAL-ADDRESS-FAMILY)"
        ),
        None => format!(
            "relay: IPv4 {v4}, no IPv6 (relay.address-v6): IPv6 Allocates get 440, dual-stack ones their IPv4 address and ADDRESS-ERROR-CODE 440"
        ),
    }
}

fn credentials(
    secret: Option<String>,
    config: Option<PathBuf>,
    user: Option<String>,
    ttl: Duration,
    uris: Vec<String>,
) -> anyhow::Result<()> {
    let config = match &config {
        Some(path) => Some((path, Config::load(path)?)),
        None => None,
    };
    let max_rest_ttl = config
        .as_ref()
        .map_or(Config::default().auth.max_rest_ttl, |(_, c)| {
            c.auth.max_rest_ttl
        });
    let secret = match (secret, config) {
        (Some(secret), _) => secret,
        (None, Some((path, config))) => match config.auth.secrets.into_iter().next() {
            Some(secret) => secret,
            None => bail!("{}: auth.secrets is empty", path.display()),
        },
        (None, None) => bail!("no secret: pass --secret, set TURNPIKE_SECRET or give --config"),
    };
    if secret.is_empty() {
        bail!("the secret is empty");
    }
    if ttl > max_rest_ttl {
        eprintln!(
            "warning: --ttl {} is longer than [auth] max-rest-ttl ({}): servers refuse the credential until its expiry is within that",
            humantime::format_duration(ttl),
            humantime::format_duration(max_rest_ttl)
        );
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
