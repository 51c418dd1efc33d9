//! Where each kind of data lives in Redis, for one schema (turnpike's or coturn's), prefix and
//! realm: the key names, the SCAN pattern (realm escaped) and the events channel.

use crate::config::{Redis as RedisConfig, RedisSchema};

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

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// turnpike: HASH secret → creation time; coturn: SET of secrets.
    pub(super) fn secrets(&self) -> String {
        match self.schema {
            RedisSchema::Turnpike => format!("{}:secrets", self.prefix),
            RedisSchema::Coturn => format!("turn/realm/{}/secret", self.realm),
        }
    }

    /// turnpike: HASH name → hex long-term key.
    pub(super) fn users(&self) -> String {
        format!("{}:users:{}", self.prefix, self.realm)
    }

    /// turnpike: HASH name → hex SHA-256 key (64 hex digits), next to [`Layout::users`]: the
    /// users that may use the SHA-256 password algorithm.
    pub(super) fn users_sha256(&self) -> String {
        format!("{}:users-sha256:{}", self.prefix, self.realm)
    }

    /// coturn: one STRING per user holding the hex key.
    pub(super) fn coturn_user(&self, name: &str) -> String {
        format!("turn/realm/{}/user/{name}/key", self.realm)
    }

    /// coturn (an addition of turnpike's; coturn ignores it): one STRING per user holding the
    /// hex SHA-256 key, next to its `key`.
    pub(super) fn coturn_user_sha256(&self, name: &str) -> String {
        format!("turn/realm/{}/user/{name}/key-sha256", self.realm)
    }

    /// coturn: what comes before the user name in a user key (unescaped, to strip it).
    pub(super) fn coturn_user_prefix(&self) -> String {
        format!("turn/realm/{}/user/", self.realm)
    }

    /// coturn: the SCAN pattern that finds every user key of the realm, realm escaped.
    pub(super) fn coturn_user_pattern(&self) -> String {
        format!("turn/realm/{}/user/*/key", glob_escape(&self.realm))
    }

    /// coturn: realm-wide quotas (`user-quota`, `total-quota`, `max-bps`).
    pub(super) fn coturn_quota(&self, which: &str) -> String {
        format!("turn/realm/{}/{which}", self.realm)
    }

    /// HASH long-term user name → JSON [`UserOverride`] (both schemas: coturn has no such
    /// thing). REST ids have none.
    pub(super) fn overrides(&self) -> String {
        format!("{}:overrides:{}", self.prefix, self.realm)
    }

    /// ZSET username → expiry (unix seconds).
    pub(super) fn revoked(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    /// Pub/sub channel for change events.
    pub(super) fn events(&self) -> String {
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
}
