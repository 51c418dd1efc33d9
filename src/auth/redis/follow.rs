//! Keeping the store in step with Redis: connect with back-off, load, follow the events
//! channel (and, for coturn's schema, reload on a timer), and tell the caller which usernames
//! lost their right to live allocations.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use redis::aio::MultiplexedConnection;

use crate::clock::unix_now;
use crate::config::RedisSchema;

use super::connection::{connect, timed};
use super::layout::Layout;
use super::load::load;
use super::store::RedisStore;
use super::{EVENT_RELOAD, EVENT_REVOKE};

/// How often the connection is checked (and `last_contact` renewed) while idle.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Bounds of the reconnect back-off (jittered).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// coturn's tools publish nothing: in that schema the snapshot is also reloaded this often.
const COTURN_RELOAD: Duration = Duration::from_secs(5);

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
        if store.take_connected() {
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
            _ = coturn_reload.tick(), if layout.schema() == RedisSchema::Coturn => {
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
