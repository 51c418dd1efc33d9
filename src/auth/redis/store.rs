//! The local snapshot the packet path reads without waiting: secrets, users, per-user overrides
//! and revocations as of the last load, and the connection's health that says whether it may
//! still be trusted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::auth::{Key, UserLimits};
use crate::clock::unix_now;

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
    /// The SHA-256 keys of those of [`Snapshot::users`] that have one (stored next to the MD5
    /// key: `P:users-sha256:R`, coturn's `.../key-sha256`); a name here but not in `users`
    /// authenticates nobody.
    pub sha256_keys: HashMap<String, [u8; 32]>,
    /// USERHASH (SHA-256 of `name:realm`) → name, for every user: see [`Snapshot::index_userhashes`].
    pub userhashes: HashMap<[u8; 32], String>,
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

    /// Fills [`Snapshot::userhashes`] from the users, for `realm`: done once per load, so that
    /// a request with USERHASH finds its user with one lookup.
    pub fn index_userhashes(&mut self, realm: &str) {
        self.userhashes = self
            .users
            .keys()
            .map(|name| (crate::stun::userhash(name, realm), name.clone()))
            .collect();
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

    /// Records the connection as down; whether it was up until now.
    pub(super) fn take_connected(&self) -> bool {
        self.connected.swap(false, Ordering::Relaxed)
    }

    pub(super) fn contact(&self) {
        self.last_contact.store(unix_now(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
