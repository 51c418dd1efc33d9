//! The Redis credential store: shared secrets, users, per-user overrides and revocations, held
//! in a local snapshot that the packet path reads without waiting. Pub/sub events refresh it
//! within a second of a change; a full reload follows every reconnect, since pub/sub loses what
//! is published while disconnected.
//!
//! Usernames and realms only ever travel as binary-safe command arguments (RESP bulk strings);
//! the one glob pattern (coturn's user keys) escapes the realm, so `*`, `?`, `[`, `\`, CR, LF
//! and NUL are data, never syntax.

use crate::clock::unix_now;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use crate::config::{Redis as RedisConfig, RedisSchema};

use super::{Key, UserLimits, parse_key_hex};

/// How long one Redis command (or opening a connection) may take before the connection is
/// considered dead. [`connect`] sets it on the connection too: the redis crate's own default
/// response timeout (500 ms) would take a Redis that answers in 600 ms for a dead one.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the connection is checked (and `last_contact` renewed) while idle.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Bounds of the reconnect back-off (jittered).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// coturn's tools publish nothing: in that schema the snapshot is also reloaded this often.
const COTURN_RELOAD: Duration = Duration::from_secs(5);
/// Event payloads on the events channel.
const EVENT_RELOAD: &[u8] = b"reload";
const EVENT_REVOKE: &[u8] = b"revoke\n";

/// Where each kind of data lives, for one schema, prefix and realm.
#[derive(Debug, Clone)]
pub struct Layout {
    schema: RedisSchema,
    prefix: String,
    realm: String,
}

impl Layout {
    pub fn new(config: &RedisConfig, realm: &str) -> Self {
        Layout {
            schema: config.schema,
            prefix: config.prefix.clone(),
            realm: realm.to_owned(),
        }
    }

    pub fn schema(&self) -> RedisSchema {
        self.schema
    }

    /// turnpike: HASH secret → creation time; coturn: SET of secrets.
    fn secrets(&self) -> String {
        match self.schema {
            RedisSchema::Turnpike => format!("{}:secrets", self.prefix),
            RedisSchema::Coturn => format!("turn/realm/{}/secret", self.realm),
        }
    }

    /// turnpike: HASH name → hex long-term key.
    fn users(&self) -> String {
        format!("{}:users:{}", self.prefix, self.realm)
    }

    /// coturn: one STRING per user holding the hex key.
    fn coturn_user(&self, name: &str) -> String {
        format!("turn/realm/{}/user/{name}/key", self.realm)
    }

    /// coturn: the SCAN pattern that finds every user key of the realm, realm escaped.
    fn coturn_user_pattern(&self) -> String {
        format!("turn/realm/{}/user/*/key", glob_escape(&self.realm))
    }

    /// coturn: realm-wide quotas (`user-quota`, `total-quota`, `max-bps`).
    fn coturn_quota(&self, which: &str) -> String {
        format!("turn/realm/{}/{which}", self.realm)
    }

    /// HASH long-term user name → JSON [`UserOverride`] (both schemas: coturn has no such
    /// thing). REST ids have none.
    fn overrides(&self) -> String {
        format!("{}:overrides:{}", self.prefix, self.realm)
    }

    /// ZSET username → expiry (unix seconds).
    fn revoked(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    /// Pub/sub channel for change events.
    fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

/// Escapes glob syntax for SCAN MATCH.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Limits set for one user, overriding `[limits]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u32>,
    /// Bits per second over all of the user's allocations on a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    #[serde(default)]
    pub disabled: bool,
}

/// Everything the store knows, as of one load.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Newest first: all verify, the first issues.
    pub secrets: Vec<Vec<u8>>,
    pub users: HashMap<String, Key>,
    pub overrides: HashMap<String, UserOverride>,
    /// Username → expiry (unix seconds) of the credential it revokes.
    pub revoked: HashMap<String, u64>,
    /// Realm-wide defaults from coturn's schema.
    pub defaults: UserLimits,
    /// Total allocations on a node, from coturn's `total-quota`.
    pub total_allocations: Option<u32>,
}

impl Snapshot {
    /// The limits of the long-term user `name`: its override over the realm's defaults. (A
    /// REST id gets the defaults alone: overrides name long-term users.)
    pub fn limits(&self, name: &str) -> UserLimits {
        let mut limits = self.defaults;
        if let Some(o) = self.overrides.get(name) {
            limits.allocations = o.allocations.or(limits.allocations);
            limits.bandwidth = o.bandwidth.or(limits.bandwidth);
            limits.disabled = o.disabled;
        }
        limits
    }

    /// Is `username` revoked at `now_unix`?
    pub fn is_revoked(&self, username: &str, now_unix: u64) -> bool {
        self.revoked
            .get(username)
            .is_some_and(|&expiry| expiry >= now_unix)
    }
}

/// The shared state of the store: the snapshot and the connection's health.
pub struct RedisStore {
    snapshot: ArcSwap<Snapshot>,
    /// Unix seconds of the last successful command; 0 = never.
    last_contact: AtomicU64,
    connected: AtomicBool,
    stale_for: Duration,
}

/// How the store stands, for logs and the status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Never loaded: Redis-backed credentials are unavailable.
    Starting,
    Connected,
    /// Disconnected, serving the last snapshot (until `stale-for` has passed).
    Stale,
    /// Disconnected for longer than `stale-for`: Redis-backed credentials are refused.
    Expired,
}

impl RedisStore {
    pub fn new(stale_for: Duration) -> Self {
        RedisStore {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            last_contact: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            stale_for,
        }
    }

    /// The current snapshot (a lock-free read).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn health(&self, now_unix: u64) -> Health {
        let last = self.last_contact.load(Ordering::Relaxed);
        if last == 0 {
            Health::Starting
        } else if self.connected.load(Ordering::Relaxed) {
            Health::Connected
        } else if now_unix.saturating_sub(last) <= self.stale_for.as_secs() {
            Health::Stale
        } else {
            Health::Expired
        }
    }

    /// May the snapshot be used to authenticate at `now_unix`?
    pub fn usable(&self, now_unix: u64) -> bool {
        matches!(self.health(now_unix), Health::Connected | Health::Stale)
    }

    /// Replaces the snapshot with a fresh load and notes the contact.
    pub fn install(&self, snapshot: Snapshot, now_unix: u64) {
        self.snapshot.store(Arc::new(snapshot));
        self.last_contact.store(now_unix, Ordering::Relaxed);
    }

    /// Records whether the connection is up.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    fn contact(&self) {
        self.last_contact.store(unix_now(), Ordering::Relaxed);
    }
}

/// `what`, or an I/O error after [`COMMAND_TIMEOUT`].
pub(crate) async fn timed<T>(
    what: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, what).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "Redis command timed out",
        ))),
    }
}

/// Opens a multiplexed connection whose commands, and the opening itself, time out after
/// [`COMMAND_TIMEOUT`].
pub async fn connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    timed(client.get_multiplexed_async_connection_with_config(&config)).await
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads everything the store needs, in one consistent pass.
pub async fn load(
    conn: &mut MultiplexedConnection,
    layout: &Layout,
) -> redis::RedisResult<Snapshot> {
    let mut snapshot = Snapshot::default();
    match layout.schema {
        RedisSchema::Turnpike => {
            let secrets: Pairs = timed(
                redis::cmd("HGETALL")
                    .arg(layout.secrets())
                    .query_async(conn),
            )
            .await?;
            let mut dated: Vec<(u64, Vec<u8>)> = secrets
                .into_iter()
                .map(|(secret, created)| (parse_u64(&created).unwrap_or(0), secret))
                .collect();
            dated.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            snapshot.secrets = dated.into_iter().map(|(_, s)| s).collect();
            let users: Pairs =
                timed(redis::cmd("HGETALL").arg(layout.users()).query_async(conn)).await?;
            snapshot.users = users
                .into_iter()
                .filter_map(|(name, key)| user_entry(name, &key))
                .collect();
        }
        RedisSchema::Coturn => {
            let mut secrets: Vec<Vec<u8>> = timed(
                redis::cmd("SMEMBERS")
                    .arg(layout.secrets())
                    .query_async(conn),
            )
            .await?;
            // A set has no order: issue with the smallest, so every node issues with the same.
            secrets.sort();
            snapshot.secrets = secrets;
            let keys = scan(conn, &layout.coturn_user_pattern()).await?;
            let prefix = format!("turn/realm/{}/user/", layout.realm);
            for key in keys {
                // `*` also matches `/`: a name with a slash is another realm's key
                // (realm "r/user/x"), not a user of this one.
                let Some(name) = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|k| k.strip_suffix("/key"))
                    .filter(|name| !name.contains('/'))
                else {
                    continue;
                };
                let value: Option<Vec<u8>> =
                    timed(redis::cmd("GET").arg(&key).query_async(conn)).await?;
                if let Some((name, key)) =
                    value.and_then(|v| user_entry(name.as_bytes().to_vec(), &v))
                {
                    snapshot.users.insert(name, key);
                }
            }
            let quota = |value: Option<Vec<u8>>| value.and_then(|v| parse_u64(&v));
            let user_quota: Option<Vec<u8>> = timed(
                redis::cmd("GET")
                    .arg(layout.coturn_quota("user-quota"))
                    .query_async(conn),
            )
            .await?;
            let total_quota: Option<Vec<u8>> = timed(
                redis::cmd("GET")
                    .arg(layout.coturn_quota("total-quota"))
                    .query_async(conn),
            )
            .await?;
            let max_bps: Option<Vec<u8>> = timed(
                redis::cmd("GET")
                    .arg(layout.coturn_quota("max-bps"))
                    .query_async(conn),
            )
            .await?;
            // coturn: 0 means no limit.
            snapshot.defaults.allocations = quota(user_quota)
                .filter(|&q| q > 0)
                .map(|q| q.min(u64::from(u32::MAX)) as u32);
            snapshot.total_allocations = quota(total_quota)
                .filter(|&q| q > 0)
                .map(|q| q.min(u64::from(u32::MAX)) as u32);
            // coturn's max-bps is bytes per second per session.
            snapshot.defaults.allocation_bandwidth = quota(max_bps)
                .filter(|&q| q > 0)
                .map(|q| q.saturating_mul(8));
        }
    }
    let overrides: Pairs = timed(
        redis::cmd("HGETALL")
            .arg(layout.overrides())
            .query_async(conn),
    )
    .await?;
    snapshot.overrides = overrides
        .into_iter()
        .filter_map(|(user, json)| {
            let user = String::from_utf8(user).ok()?;
            let parsed = serde_json::from_slice::<UserOverride>(&json);
            match parsed {
                Ok(o) => Some((user, o)),
                Err(error) => {
                    tracing::warn!(%error, "ignoring a malformed per-user override in Redis");
                    None
                }
            }
        })
        .collect();
    let now = unix_now();
    let revoked: Vec<(Vec<u8>, f64)> = timed(
        redis::cmd("ZRANGEBYSCORE")
            .arg(layout.revoked())
            .arg(now)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(conn),
    )
    .await?;
    snapshot.revoked = revoked
        .into_iter()
        .filter_map(|(name, expiry)| Some((String::from_utf8(name).ok()?, expiry as u64)))
        .collect();
    Ok(snapshot)
}

fn user_entry(name: Vec<u8>, key: &[u8]) -> Option<(String, Key)> {
    let name = String::from_utf8(name).ok()?;
    let key = std::str::from_utf8(key)
        .ok()
        .and_then(|k| parse_key_hex(k.trim()));
    match key {
        Some(key) => Some((name, key)),
        None => {
            tracing::warn!("ignoring a user in Redis whose key is not 32 hex digits");
            None
        }
    }
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

async fn scan(conn: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    // Bounded: SCAN returns cursor 0 after a full iteration; the cap guards a broken server.
    for _ in 0..1_000_000 {
        let (next, batch): (u64, Vec<Vec<u8>>) = timed(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn),
        )
        .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(keys)
}

/// Keeps `store` in step with Redis until the process ends: connects (backing off with jitter
/// while Redis is down), loads a full snapshot, then follows the events channel. `revoked` is
/// told about revoked usernames (every one in a fresh snapshot, each new one as it comes) so
/// that their allocations are closed.
pub async fn run(
    store: Arc<RedisStore>,
    client: redis::Client,
    layout: Layout,
    revoked: impl Fn(Vec<String>) + Send + Sync + 'static,
) {
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    loop {
        // `follow` returns only when the connection fails (or never came up).
        let Err(error) = follow(&store, &client, &layout, &revoked).await;
        if store.connected.swap(false, Ordering::Relaxed) {
            tracing::error!(
                %error,
                "lost the connection to Redis: serving from the last snapshot until redis.stale-for, reconnecting"
            );
            backoff = BACKOFF_MIN;
            warned = true;
        } else if !warned {
            tracing::error!(
                %error,
                "Redis unreachable: credentials from Redis are unavailable until it answers; retrying"
            );
            warned = true;
        } else {
            tracing::debug!(%error, "Redis still unreachable");
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter).min(BACKOFF_MAX)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connected session: returns (an error) only when the connection fails.
async fn follow(
    store: &RedisStore,
    client: &redis::Client,
    layout: &Layout,
    revoked: &(impl Fn(Vec<String>) + Send + Sync),
) -> Result<std::convert::Infallible, redis::RedisError> {
    let mut conn = connect(client).await?;
    let mut pubsub = timed(client.get_async_pubsub()).await?;
    // Subscribe before loading, so that no change falls between the load and the subscription.
    timed(pubsub.subscribe(layout.events())).await?;
    let snapshot = load(&mut conn, layout).await?;
    let all_revoked: Vec<String> = snapshot.revoked.keys().cloned().collect();
    store.install(snapshot, unix_now());
    store.set_connected(true);
    let loaded = store.snapshot();
    tracing::info!(
        users = loaded.users.len(),
        secrets = loaded.secrets.len(),
        "Redis connected; credentials loaded"
    );
    if !all_revoked.is_empty() {
        revoked(all_revoked);
    }
    let mut messages = pubsub.on_message();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut coturn_reload = tokio::time::interval(COTURN_RELOAD);
    coturn_reload.reset();
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connection closed")));
                };
                let payload = message.get_payload_bytes();
                if payload != EVENT_RELOAD && !payload.starts_with(EVENT_REVOKE) {
                    tracing::debug!("unknown event on the Redis channel");
                }
                reload(store, &mut conn, layout, revoked).await?;
            }
            _ = coturn_reload.tick(), if layout.schema == RedisSchema::Coturn => {
                reload(store, &mut conn, layout, revoked).await?;
            }
            _ = heartbeat.tick() => {
                let _: String = timed(redis::cmd("PING").query_async(&mut conn)).await?;
                store.contact();
            }
        }
    }
}

/// Loads a fresh snapshot and tells `withdrawn` which names lost their right to live
/// allocations since the last one: newly revoked usernames, newly disabled users, and stored
/// users that were removed.
async fn reload(
    store: &RedisStore,
    conn: &mut MultiplexedConnection,
    layout: &Layout,
    withdrawn: &(impl Fn(Vec<String>) + Send + Sync),
) -> redis::RedisResult<()> {
    let fresh = load(conn, layout).await?;
    let old = store.snapshot();
    let mut gone: Vec<String> = fresh
        .revoked
        .keys()
        .filter(|name| !old.revoked.contains_key(*name))
        .chain(
            old.users
                .keys()
                .filter(|name| !fresh.users.contains_key(*name)),
        )
        .cloned()
        .collect();
    gone.extend(
        fresh
            .overrides
            .iter()
            .filter(|(user, o)| o.disabled && !old.limits(user).disabled)
            .map(|(user, _)| user.clone()),
    );
    drop(old);
    store.install(fresh, unix_now());
    if !gone.is_empty() {
        withdrawn(gone);
    }
    Ok(())
}

/// Administration, for the CLI: each call changes Redis and announces the change.
pub struct Admin {
    conn: MultiplexedConnection,
    layout: Layout,
}

impl Admin {
    pub async fn connect(client: &redis::Client, layout: Layout) -> redis::RedisResult<Admin> {
        let conn = connect(client).await?;
        Ok(Admin { conn, layout })
    }

    async fn announce(&mut self, event: &[u8]) -> redis::RedisResult<()> {
        let _: i64 = timed(
            redis::cmd("PUBLISH")
                .arg(self.layout.events())
                .arg(event)
                .query_async(&mut self.conn),
        )
        .await?;
        Ok(())
    }

    /// Adds a REST API secret; in schema turnpike it becomes the one that issues.
    pub async fn add_secret(&mut self, secret: &str) -> redis::RedisResult<bool> {
        let added: i64 = match self.layout.schema {
            RedisSchema::Turnpike => {
                timed(
                    redis::cmd("HSET")
                        .arg(self.layout.secrets())
                        .arg(secret)
                        .arg(unix_now())
                        .query_async(&mut self.conn),
                )
                .await?
            }
            RedisSchema::Coturn => {
                timed(
                    redis::cmd("SADD")
                        .arg(self.layout.secrets())
                        .arg(secret)
                        .query_async(&mut self.conn),
                )
                .await?
            }
        };
        self.announce(EVENT_RELOAD).await?;
        Ok(added > 0)
    }

    pub async fn remove_secret(&mut self, secret: &str) -> redis::RedisResult<bool> {
        let command = match self.layout.schema {
            RedisSchema::Turnpike => "HDEL",
            RedisSchema::Coturn => "SREM",
        };
        let removed: i64 = timed(
            redis::cmd(command)
                .arg(self.layout.secrets())
                .arg(secret)
                .query_async(&mut self.conn),
        )
        .await?;
        self.announce(EVENT_RELOAD).await?;
        Ok(removed > 0)
    }

    /// Secrets, newest first.
    pub async fn secrets(&mut self) -> redis::RedisResult<Vec<String>> {
        let snapshot = load(&mut self.conn, &self.layout).await?;
        Ok(snapshot
            .secrets
            .into_iter()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .collect())
    }

    /// Adds or replaces a user's long-term key.
    pub async fn add_user(&mut self, name: &str, key: &Key) -> redis::RedisResult<()> {
        let hex = super::key_hex(key);
        let _: redis::Value = match self.layout.schema {
            RedisSchema::Turnpike => {
                timed(
                    redis::cmd("HSET")
                        .arg(self.layout.users())
                        .arg(name)
                        .arg(hex)
                        .query_async(&mut self.conn),
                )
                .await?
            }
            RedisSchema::Coturn => {
                timed(
                    redis::cmd("SET")
                        .arg(self.layout.coturn_user(name))
                        .arg(hex)
                        .query_async(&mut self.conn),
                )
                .await?
            }
        };
        self.announce(EVENT_RELOAD).await
    }

    pub async fn remove_user(&mut self, name: &str) -> redis::RedisResult<bool> {
        let removed: i64 = match self.layout.schema {
            RedisSchema::Turnpike => {
                timed(
                    redis::cmd("HDEL")
                        .arg(self.layout.users())
                        .arg(name)
                        .query_async(&mut self.conn),
                )
                .await?
            }
            RedisSchema::Coturn => {
                timed(
                    redis::cmd("DEL")
                        .arg(self.layout.coturn_user(name))
                        .query_async(&mut self.conn),
                )
                .await?
            }
        };
        self.announce(EVENT_RELOAD).await?;
        Ok(removed > 0)
    }

    /// Users, sorted, with their overrides.
    pub async fn users(&mut self) -> redis::RedisResult<Vec<(String, UserOverride)>> {
        let snapshot = load(&mut self.conn, &self.layout).await?;
        let mut users: Vec<_> = snapshot
            .users
            .keys()
            .map(|name| {
                let o = snapshot.overrides.get(name).copied().unwrap_or_default();
                (name.clone(), o)
            })
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(users)
    }

    /// Replaces a user's overrides; returns the new value.
    pub async fn set_override(
        &mut self,
        user: &str,
        change: impl FnOnce(&mut UserOverride),
    ) -> redis::RedisResult<UserOverride> {
        let current: Option<Vec<u8>> = timed(
            redis::cmd("HGET")
                .arg(self.layout.overrides())
                .arg(user)
                .query_async(&mut self.conn),
        )
        .await?;
        let mut value = current
            .and_then(|json| serde_json::from_slice::<UserOverride>(&json).ok())
            .unwrap_or_default();
        change(&mut value);
        let json = serde_json::to_string(&value).unwrap_or_else(|_| "{}".to_owned());
        let _: i64 = timed(
            redis::cmd("HSET")
                .arg(self.layout.overrides())
                .arg(user)
                .arg(json)
                .query_async(&mut self.conn),
        )
        .await?;
        self.announce(EVENT_RELOAD).await?;
        Ok(value)
    }

    /// Revokes `username` until `expiry` (unix seconds) and tells every node, which closes its
    /// allocations.
    pub async fn revoke(&mut self, username: &str, expiry: u64) -> redis::RedisResult<()> {
        let _: i64 = timed(
            redis::cmd("ZADD")
                .arg(self.layout.revoked())
                .arg(expiry)
                .arg(username)
                .query_async(&mut self.conn),
        )
        .await?;
        // Entries past their expiry protect nothing any more.
        let _: i64 = timed(
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(self.layout.revoked())
                .arg("-inf")
                .arg(format!("({}", unix_now()))
                .query_async(&mut self.conn),
        )
        .await?;
        let mut event = EVENT_REVOKE.to_vec();
        event.extend_from_slice(username.as_bytes());
        self.announce(&event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_syntax_in_the_realm_is_escaped() {
        assert_eq!(glob_escape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        let layout = Layout {
            schema: RedisSchema::Coturn,
            prefix: "turnpike".into(),
            realm: "r*".into(),
        };
        assert_eq!(layout.coturn_user_pattern(), "turn/realm/r\\*/user/*/key");
        assert_eq!(layout.coturn_user("a*b"), "turn/realm/r*/user/a*b/key");
    }

    #[test]
    fn overrides_apply_over_realm_defaults() {
        let mut snapshot = Snapshot::default();
        snapshot.defaults.allocations = Some(5);
        snapshot.overrides.insert(
            "alice".into(),
            UserOverride {
                allocations: Some(2),
                bandwidth: None,
                disabled: false,
            },
        );
        assert_eq!(snapshot.limits("alice").allocations, Some(2));
        assert_eq!(snapshot.limits("bob").allocations, Some(5));
        let json: UserOverride = serde_json::from_str(r#"{"disabled":true}"#).unwrap();
        assert!(json.disabled);
        assert!(serde_json::from_str::<UserOverride>(r#"{"colour":1}"#).is_err());
    }

    #[test]
    fn health_follows_contact_and_stale_for() {
        let store = RedisStore::new(Duration::from_secs(60));
        let now = unix_now();
        assert_eq!(store.health(now), Health::Starting);
        assert!(!store.usable(now));
        store.contact();
        store.connected.store(true, Ordering::Relaxed);
        assert_eq!(store.health(now), Health::Connected);
        store.connected.store(false, Ordering::Relaxed);
        assert_eq!(store.health(now + 60), Health::Stale);
        assert!(store.usable(now + 60));
        assert_eq!(store.health(now + 120), Health::Expired);
        assert!(!store.usable(now + 120));
    }
}
