//! Administration for the CLI: secrets, users, overrides and revocations changed in Redis,
//! each change announced on the events channel.

use redis::aio::MultiplexedConnection;

use crate::auth::key_hex;
use crate::clock::unix_now;
use crate::config::RedisSchema;

use super::connection::{connect, timed};
use super::layout::Layout;
use super::load::load;
use super::store::UserOverride;
use super::{EVENT_RELOAD, EVENT_REVOKE};

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
        let added: i64 = match self.layout.schema() {
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
        let command = match self.layout.schema() {
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

    /// Adds or replaces a user's long-term keys: the MD5 one, and the SHA-256 one next to it
    /// (both derived from the password by the caller).
    pub async fn add_user(
        &mut self,
        name: &str,
        md5: &[u8; 16],
        sha256: &[u8; 32],
    ) -> redis::RedisResult<()> {
        let (md5, sha256) = (key_hex(md5), key_hex(sha256));
        let _: redis::Value = match self.layout.schema() {
            RedisSchema::Turnpike => {
                timed(
                    redis::pipe()
                        .atomic()
                        .cmd("HSET")
                        .arg(self.layout.users())
                        .arg(name)
                        .arg(md5)
                        .cmd("HSET")
                        .arg(self.layout.users_sha256())
                        .arg(name)
                        .arg(sha256)
                        .query_async(&mut self.conn),
                )
                .await?
            }
            RedisSchema::Coturn => {
                timed(
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(self.layout.coturn_user(name))
                        .arg(md5)
                        .cmd("SET")
                        .arg(self.layout.coturn_user_sha256(name))
                        .arg(sha256)
                        .query_async(&mut self.conn),
                )
                .await?
            }
        };
        self.announce(EVENT_RELOAD).await
    }

    pub async fn remove_user(&mut self, name: &str) -> redis::RedisResult<bool> {
        let removed: i64 = match self.layout.schema() {
            RedisSchema::Turnpike => {
                let (removed, _): (i64, i64) = timed(
                    redis::pipe()
                        .atomic()
                        .cmd("HDEL")
                        .arg(self.layout.users())
                        .arg(name)
                        .cmd("HDEL")
                        .arg(self.layout.users_sha256())
                        .arg(name)
                        .query_async(&mut self.conn),
                )
                .await?;
                removed
            }
            RedisSchema::Coturn => {
                let (removed, _): (i64, i64) = timed(
                    redis::pipe()
                        .atomic()
                        .cmd("DEL")
                        .arg(self.layout.coturn_user(name))
                        .cmd("DEL")
                        .arg(self.layout.coturn_user_sha256(name))
                        .query_async(&mut self.conn),
                )
                .await?;
                removed
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
