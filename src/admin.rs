//! Admin commands that change the shared Redis store: secrets, users, overrides, revocations.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use turnpike::auth::redis::{Admin, Layout, UserOverride};
use turnpike::auth::{escape_name, is_control_or_format, key_hex, parse_rest_username};
use turnpike::clock::unix_now;
use turnpike::config::{Bandwidth, Config, Redis, RedisSchema, redact_url};
use turnpike::stun::{long_term_key, long_term_key_sha256};

/// Where the store is: the server's configuration, or a URL.
#[derive(Args)]
pub struct StoreArgs {
    /// The configuration the servers use (its [redis] section and realm).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Redis URL, instead of (or overriding) the configuration's.
    #[arg(long, global = true, env = "TURNPIKE_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Realm (default: the configuration's, else "turnpike.local").
    #[arg(long, global = true)]
    realm: Option<String>,
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Add a TURN REST API secret (schema turnpike: it becomes the one that issues).
    Add { secret: String },
    /// List the secrets, newest first.
    List,
    /// Remove a secret: credentials minted with it stop working.
    Remove { secret: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (or change its password). Only the long-term keys are stored (MD5 and,
    /// next to it, SHA-256).
    Add {
        name: String,
        #[arg(long)]
        password: String,
    },
    /// Remove a user.
    Remove { name: String },
    /// List users and their overrides.
    List,
    /// Set per-user overrides of [limits].
    Set {
        name: String,
        /// Allocations the user may hold.
        #[arg(long)]
        allocations: Option<u32>,
        /// Bandwidth over all of the user's allocations on a node, e.g. "2 Mbps".
        #[arg(long)]
        bandwidth: Option<String>,
        /// A disabled user cannot authenticate.
        #[arg(long)]
        disabled: Option<bool>,
    },
}

struct Store {
    admin: Admin,
    realm: String,
    schema: RedisSchema,
    shown_url: String,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

async fn connect(args: &StoreArgs) -> anyhow::Result<Store> {
    let config = match &args.config {
        Some(path) => Some(Config::load(path)?),
        None => None,
    };
    let from_config = config.as_ref().and_then(|c| c.redis.clone());
    let redis = match (&args.redis, from_config) {
        (Some(url), Some(redis)) => Redis {
            url: url.clone(),
            ..redis
        },
        (Some(url), None) => Redis {
            url: url.clone(),
            prefix: "turnpike".to_owned(),
            schema: RedisSchema::Turnpike,
            stale_for: std::time::Duration::from_secs(300),
            node_id: None,
            lease_time: std::time::Duration::from_secs(30),
        },
        (None, Some(redis)) => redis,
        (None, None) => match &args.config {
            Some(path) => bail!(
                "{} has no [redis] section; pass --redis URL",
                path.display()
            ),
            None => bail!("no Redis: pass -c FILE (with a [redis] section) or --redis URL"),
        },
    };
    let realm = args
        .realm
        .clone()
        .or_else(|| config.as_ref().map(|c| c.realm.clone()))
        .unwrap_or_else(|| Config::default().realm);
    let shown_url = redact_url(&redis.url);
    let client = redis::Client::open(redis.url.as_str())
        .with_context(|| format!("invalid Redis URL {shown_url}"))?;
    let layout = Layout::new(&redis, &realm);
    let admin = Admin::connect(&client, layout)
        .await
        .with_context(|| format!("cannot reach Redis at {shown_url}"))?;
    Ok(Store {
        admin,
        realm,
        schema: redis.schema,
        shown_url,
    })
}

pub fn secret(args: &StoreArgs, command: SecretCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut store = connect(args).await?;
        let failed = |what: &str| format!("{what} in Redis at {}", store.shown_url);
        match command {
            SecretCommand::Add { secret } => {
                if secret.is_empty() {
                    bail!("the secret is empty");
                }
                let added = store
                    .admin
                    .add_secret(&secret)
                    .await
                    .with_context(|| failed("cannot add the secret"))?;
                match (added, store.schema) {
                    (true, RedisSchema::Turnpike) => {
                        println!("added a secret; it now issues credentials")
                    }
                    (true, RedisSchema::Coturn) => println!("added a secret"),
                    (false, _) => println!("the secret was already there (date renewed)"),
                }
            }
            SecretCommand::List => {
                let secrets = store
                    .admin
                    .secrets()
                    .await
                    .with_context(|| failed("cannot read the secrets"))?;
                for secret in secrets {
                    println!("{secret}");
                }
            }
            SecretCommand::Remove { secret } => {
                let removed = store
                    .admin
                    .remove_secret(&secret)
                    .await
                    .with_context(|| failed("cannot remove the secret"))?;
                if !removed {
                    bail!("no such secret");
                }
                println!("removed a secret");
            }
        }
        Ok(())
    })
}

pub fn user(args: &StoreArgs, command: UserCommand) -> anyhow::Result<()> {
    // A name that cannot be added is refused before Redis is asked anything.
    if let UserCommand::Add { name, .. } = &command {
        check_name(name)?;
        check_new_name(name)?;
    }
    runtime()?.block_on(async {
        let mut store = connect(args).await?;
        let failed = |what: &str| format!("{what} in Redis at {}", store.shown_url);
        match command {
            UserCommand::Add { name, password } => {
                if password.is_empty() {
                    bail!("the password is empty");
                }
                let key = long_term_key(&name, &store.realm, &password);
                let sha256 = long_term_key_sha256(&name, &store.realm, &password);
                store
                    .admin
                    .add_user(&name, &key, &sha256)
                    .await
                    .with_context(|| failed("cannot add the user"))?;
                println!(
                    "added user {name:?} in realm {:?} (key {}, SHA-256 key {})",
                    store.realm,
                    key_hex(&key),
                    key_hex(&sha256)
                );
            }
            UserCommand::Remove { name } => {
                let removed = store
                    .admin
                    .remove_user(&name)
                    .await
                    .with_context(|| failed("cannot remove the user"))?;
                if !removed {
                    bail!("no user {name:?} in realm {:?}", store.realm);
                }
                println!("removed user {name:?} from realm {:?}", store.realm);
            }
            UserCommand::List => {
                let users = store
                    .admin
                    .users()
                    .await
                    .with_context(|| failed("cannot read the users"))?;
                for (name, overrides) in users {
                    // Names written straight into Redis may hold anything: shown escaped, so
                    // none can rearrange or drive the terminal.
                    let name = escape_name(&name);
                    if overrides == UserOverride::default() {
                        println!("{name}");
                    } else {
                        println!("{name}\t{}", serde_json::to_string(&overrides)?);
                    }
                }
            }
            UserCommand::Set {
                name,
                allocations,
                bandwidth,
                disabled,
            } => {
                check_name(&name)?;
                let bandwidth = match bandwidth {
                    Some(text) => Some(parse_bandwidth(&text)?),
                    None => None,
                };
                if allocations.is_none() && bandwidth.is_none() && disabled.is_none() {
                    bail!("nothing to set: give --allocations, --bandwidth or --disabled");
                }
                let value = store
                    .admin
                    .set_override(&name, |o| {
                        if let Some(n) = allocations {
                            o.allocations = Some(n);
                        }
                        if let Some(bps) = bandwidth {
                            o.bandwidth = (bps > 0).then_some(bps);
                        }
                        if let Some(d) = disabled {
                            o.disabled = d;
                        }
                    })
                    .await
                    .with_context(|| failed("cannot set the user's limits"))?;
                println!("{name}\t{}", serde_json::to_string(&value)?);
            }
        }
        Ok(())
    })
}

pub fn revoke(args: &StoreArgs, username: &str) -> anyhow::Result<()> {
    let Some((expiry, _)) = parse_rest_username(username) else {
        bail!(
            "{username:?} is not a TURN REST API username (<expiry>:<user>); to stop a stored user use `turnpike user set NAME --disabled true`"
        );
    };
    if expiry < unix_now() {
        println!("{username:?} has already expired; nothing to revoke");
        return Ok(());
    }
    runtime()?.block_on(async {
        let mut store = connect(args).await?;
        store
            .admin
            .revoke(username, expiry)
            .await
            .with_context(|| format!("cannot revoke in Redis at {}", store.shown_url))?;
        println!("revoked {username:?}; its allocations are being closed on every node");
        Ok(())
    })
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 508 {
        bail!("a user name must be 1 to 508 bytes");
    }
    Ok(())
}

/// A name `user add` creates must also be one that logs, terminals and the dashboard show as
/// it is. (Existing names of any form can still be set, removed and disabled.)
fn check_new_name(name: &str) -> anyhow::Result<()> {
    if let Some(c) = name.chars().find(|&c| is_control_or_format(c)) {
        bail!(
            "a user name must not contain control or invisible format characters (bidi overrides, zero-width spaces, ...); {:?} has U+{:04X}",
            name,
            u32::from(c)
        );
    }
    Ok(())
}

fn parse_bandwidth(text: &str) -> anyhow::Result<u64> {
    let bandwidth: Bandwidth = text
        .parse()
        .map_err(|problem| anyhow::anyhow!("--bandwidth: {problem}"))?;
    Ok(bandwidth.0)
}
