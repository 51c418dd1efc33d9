//! One log line per allocation created and ended, so an operator can answer "what happened to
//! Alice's call"; with `[log] redact = true` usernames and addresses become stable hashes.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::stun::hmac_sha1;
use crate::turn::{Ended, FiveTuple, Server};

use super::status::format_id;

/// Hides usernames and addresses behind keyed hashes: the same value always gives the same
/// hash (so lines can be correlated), and without the key a hash cannot be checked against a
/// guess.
#[derive(Clone)]
pub struct Redactor {
    key: Option<[u8; 20]>,
}

impl Redactor {
    /// `key_material` should be stable across restarts for hashes to stay comparable; the
    /// realm and a node-local secret do well.
    pub fn new(enabled: bool, key_material: &str) -> Self {
        Redactor {
            key: enabled.then(|| hmac_sha1(b"turnpike log redaction", &[key_material.as_bytes()])),
        }
    }

    fn hash(&self, key: &[u8; 20], value: &[u8]) -> String {
        let mac = hmac_sha1(key, &[value]);
        mac[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The username (control and format characters escaped, e.g. `\u{202e}`, so that no name
    /// can rearrange or break the line it is logged in), or its hash.
    pub fn user<'a>(&'a self, username: &'a str) -> Shown<'a> {
        match &self.key {
            None => Shown::Plain(crate::auth::escape_name(username).into_owned()),
            Some(key) => Shown::Hidden(self.hash(key, username.as_bytes()), "user"),
        }
    }

    /// The address, or a hash of its IP (the port is kept: it says nothing about who).
    pub fn addr(&self, addr: SocketAddr) -> Shown<'static> {
        match &self.key {
            None => Shown::Plain(addr.to_string()),
            Some(key) => {
                let ip = addr.ip().to_string();
                Shown::Hidden(
                    format!("{}:{}", self.hash(key, ip.as_bytes()), addr.port()),
                    "ip",
                )
            }
        }
    }
}

/// A value as it goes into the log.
pub enum Shown<'a> {
    Plain(String),
    Hidden(String, &'a str),
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Plain(value) => f.write_str(value),
            Shown::Hidden(hash, kind) => write!(f, "{kind}-{hash}"),
        }
    }
}

/// Logs an allocation that was just granted.
pub fn created(redactor: &Redactor, worker: usize, core: &Server, id: crate::turn::AllocationId) {
    let Some(allocation) = core.allocation(id) else {
        return;
    };
    let tuple: &FiveTuple = &allocation.tuple();
    tracing::info!(
        allocation = %format_id(worker, id),
        user = %redactor.user(allocation.username()),
        transport = %tuple.transport,
        client = %redactor.addr(tuple.client),
        relay = %allocation.relayed().map_or_else(String::new, |r| r.to_string()),
        relay_transport = if allocation.is_tcp() { "tcp" } else { "udp" },
        // A dual allocation's second relayed address; absent from other allocations' lines.
        relay_v6 = allocation.relayed_addresses().nth(1).map(tracing::field::display),
        "allocation created"
    );
}

/// Logs an allocation that ended.
pub fn ended(redactor: &Redactor, worker: usize, ended: &Ended, now: Instant) {
    let duration = now.saturating_duration_since(ended.created);
    tracing::info!(
        allocation = %format_id(worker, ended.allocation),
        user = %redactor.user(&ended.username),
        transport = %ended.tuple.transport,
        client = %redactor.addr(ended.tuple.client),
        relay = %ended.relayed,
        relay_transport = if ended.tcp { "tcp" } else { "udp" },
        relay_v6 = ended.dual.map(tracing::field::display),
        duration_s = duration.as_secs_f64(),
        to_peer_bytes = ended.traffic.to_peer_bytes,
        to_client_bytes = ended.traffic.to_client_bytes,
        to_peer_packets = ended.traffic.to_peer_packets,
        to_client_packets = ended.traffic.to_client_packets,
        reason = ended.reason.as_str(),
        "allocation ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_is_stable_and_hides_the_value() {
        let on = Redactor::new(true, "realm");
        let addr: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let shown = on.addr(addr).to_string();
        assert!(!shown.contains("198.51.100.7"), "{shown}");
        assert!(shown.ends_with(":5000"));
        assert_eq!(shown, on.addr(addr).to_string());
        assert_ne!(
            shown,
            on.addr("198.51.100.8:5000".parse().unwrap()).to_string()
        );
        let user = on.user("alice").to_string();
        assert!(
            !user.contains("alice") && user.starts_with("user-"),
            "{user}"
        );
        assert_ne!(
            user,
            Redactor::new(true, "other realm").user("alice").to_string()
        );
        let off = Redactor::new(false, "realm");
        assert_eq!(off.user("alice").to_string(), "alice");
        assert_eq!(
            off.user("1700000000:\u{202e}ecilA").to_string(),
            "1700000000:\\u{202e}ecilA"
        );
        assert_eq!(off.addr(addr).to_string(), "198.51.100.7:5000");
    }
}
