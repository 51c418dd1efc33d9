//! What a client needs to connect: the server and transport, the credentials (long-term or
//! minted from a TURN REST secret), and the transaction timing.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ClientTls;
use crate::auth::rest_password;

/// The transport to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            _ => Err(format!("{s:?}: expected udp, tcp or tls")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// Who the client is. `Debug` leaves the password and the secret out.
#[derive(Clone)]
pub enum Credentials {
    /// A long-term user: name and password.
    LongTerm { username: String, password: String },
    /// TURN REST API: the username `<now + ttl>:<user>` and its password are minted from the
    /// shared secret when the client connects.
    Rest {
        secret: String,
        user: String,
        ttl: Duration,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::LongTerm { username, .. } => f
                .debug_struct("LongTerm")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Rest { user, ttl, .. } => f
                .debug_struct("Rest")
                .field("secret", &"<redacted>")
                .field("user", user)
                .field("ttl", ttl)
                .finish(),
        }
    }
}

impl Credentials {
    pub fn long_term(username: &str, password: &str) -> Self {
        Credentials::LongTerm {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    pub fn rest(secret: &str, user: &str, ttl: Duration) -> Self {
        Credentials::Rest {
            secret: secret.to_owned(),
            user: user.to_owned(),
            ttl,
        }
    }

    /// The username and password to use now.
    pub(super) fn resolve(&self) -> (String, String) {
        match self {
            Credentials::LongTerm { username, password } => (username.clone(), password.clone()),
            Credentials::Rest { secret, user, ttl } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let username = format!("{}:{user}", (now + *ttl).as_secs());
                let password = rest_password(secret.as_bytes(), &username);
                (username, password)
            }
        }
    }
}

/// Transaction timing. The defaults are RFC 8489's: over UDP a request is sent up to 7 times
/// (Rc), 500 ms apart at first and doubling, and given up 16 × 500 ms (Rm × RTO) after the last
/// one, 39.5 s in all; over TCP and TLS it is sent once and given up after 39.5 s (Ti).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The first retransmission timeout (RTO).
    pub rto: Duration,
    /// Transmissions of one request over UDP, the first included (Rc).
    pub transmissions: u32,
    /// After the last transmission, wait this many RTOs (Rm).
    pub last_wait_factor: u32,
    /// How long a request over TCP or TLS may go unanswered (Ti).
    pub stream_timeout: Duration,
    /// How long the TCP connection and TLS handshake may take.
    pub connect_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rto: Duration::from_millis(500),
            transmissions: 7,
            last_wait_factor: 16,
            stream_timeout: Duration::from_millis(39_500),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything needed to connect.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub server: SocketAddr,
    pub transport: Transport,
    pub credentials: Credentials,
    /// Local address to bind (e.g. `127.0.0.2:0`); `None` binds the unspecified address of the
    /// server's family with an ephemeral port.
    pub local: Option<SocketAddr>,
    /// Required for [`Transport::Tls`].
    pub tls: Option<ClientTls>,
    pub timing: Timing,
}

impl ClientConfig {
    /// A configuration with RFC timing, no local address and no TLS settings.
    pub fn new(server: SocketAddr, transport: Transport, credentials: Credentials) -> Self {
        ClientConfig {
            server,
            transport,
            credentials,
            local: None,
            tls: None,
            timing: Timing::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_keeps_passwords_and_secrets_out() {
        let long_term = format!("{:?}", Credentials::long_term("alice", "wonderland"));
        assert_eq!(
            long_term,
            r#"LongTerm { username: "alice", password: "<redacted>" }"#
        );
        let rest = Credentials::rest("s3cret-value", "bob", Duration::from_secs(60));
        let config = ClientConfig::new("127.0.0.1:3478".parse().unwrap(), Transport::Udp, rest);
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret-value"), "{text}");
        assert!(text.contains(r#"user: "bob""#), "{text}");
    }

    #[test]
    fn rest_credentials_follow_the_turn_rest_api() {
        let (username, password) =
            Credentials::rest("s3cret", "carol", Duration::from_secs(3600)).resolve();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, "carol");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            (now + 3590..=now + 3610).contains(&expiry),
            "{expiry} vs {now}"
        );
        assert_eq!(password, rest_password(b"s3cret", &username));
    }

    #[test]
    fn transports_parse_and_print() {
        for name in ["udp", "tcp", "tls"] {
            assert_eq!(name.parse::<Transport>().unwrap().to_string(), name);
        }
        assert!("sctp".parse::<Transport>().is_err());
    }
}
