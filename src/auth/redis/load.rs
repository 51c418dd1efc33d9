//! Reading a full snapshot from Redis in one pass, in either schema; malformed entries are
//! skipped with a warning.

use redis::aio::MultiplexedConnection;

use crate::auth::{Key, parse_key_hex, parse_sha256_key_hex};
use crate::clock::unix_now;
use crate::config::RedisSchema;

use super::connection::timed;
use super::layout::Layout;
use super::store::{Snapshot, UserOverride};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads everything the store needs, in one consistent pass.
pub async fn load(
    conn: &mut MultiplexedConnection,
    layout: &Layout,
) -> redis::RedisResult<Snapshot> {
    let mut snapshot = Snapshot::default();
    match layout.schema() {
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
            let sha256: Pairs = timed(
                redis::cmd("HGETALL")
                    .arg(layout.users_sha256())
                    .query_async(conn),
            )
            .await?;
            snapshot.sha256_keys = sha256
                .into_iter()
                .filter_map(|(name, key)| sha256_entry(name, &key))
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
            let prefix = layout.coturn_user_prefix();
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
                    let sha256: Option<Vec<u8>> = timed(
                        redis::cmd("GET")
                            .arg(layout.coturn_user_sha256(&name))
                            .query_async(conn),
                    )
                    .await?;
                    if let Some((name, key)) =
                        sha256.and_then(|v| sha256_entry(name.as_bytes().to_vec(), &v))
                    {
                        snapshot.sha256_keys.insert(name, key);
                    }
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
    snapshot.index_userhashes(layout.realm());
    Ok(snapshot)
}

fn user_entry(name: Vec<u8>, key: &[u8]) -> Option<(String, Key)> {
    // coturn's layout holds the MD5 key; no SHA-256 key can be derived from it.
    let (name, key) = hex_entry(name, key, parse_key_hex, "32")?;
    Some((name, Key::Md5(key)))
}

fn sha256_entry(name: Vec<u8>, key: &[u8]) -> Option<(String, [u8; 32])> {
    hex_entry(name, key, parse_sha256_key_hex, "64")
}

/// A user's name and a hex key `parse` reads (`digits` long, for the warning when it cannot).
fn hex_entry<K>(
    name: Vec<u8>,
    key: &[u8],
    parse: fn(&str) -> Option<K>,
    digits: &str,
) -> Option<(String, K)> {
    let name = String::from_utf8(name).ok()?;
    let key = std::str::from_utf8(key).ok().and_then(|k| parse(k.trim()));
    match key {
        Some(key) => Some((name, key)),
        None => {
            tracing::warn!("ignoring a user key in Redis that is not {digits} hex digits");
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
