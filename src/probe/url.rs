//! `turn:` and `turns:` URIs (RFC 7065) as the probe takes them: scheme, host, port and
//! transport, every refusal naming the URI and what is wrong with it.

use std::fmt;
use std::net::IpAddr;

use crate::client::Transport;

/// Longest URI accepted: far above any real one, short enough that an error message quoting it
/// stays readable.
pub const MAX_URL_LEN: usize = 1000;

/// The default ports of RFC 7065 §3.
const TURN_PORT: u16 = 3478;
const TURNS_PORT: u16 = 5349;

/// A parsed `turn:`/`turns:` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnUrl {
    /// The URI as given.
    pub text: String,
    /// The host: an IP address (IPv6 without brackets) or a DNS name.
    pub host: Host,
    pub port: u16,
    /// `Tls` for `turns:` (TLS over TCP).
    pub transport: Transport,
}

/// The host part of a URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl TurnUrl {
    /// `host:port`, as a person writes it (IPv6 in brackets).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Parses `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port][?transport=tcp]`.
    /// Without `?transport`, `turn:` means UDP and `turns:` TLS over TCP.
    pub fn parse(text: &str) -> Result<TurnUrl, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!(
                "a URI of {} bytes (at most {MAX_URL_LEN}): {}…",
                text.len(),
                shown(text)
            ));
        }
        let message = |why: &str| format!("{}: {why}", shown(text));
        let bad = |why: &str| Err(message(why));
        let Some((scheme, rest)) = text.split_once(':') else {
            return bad(
                "no scheme: expected turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]",
            );
        };
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "turn" => false,
            "turns" => true,
            "stun" | "stuns" => {
                return bad("a STUN URI: the probe needs a TURN server (turn: or turns:)");
            }
            _ => return bad("unknown scheme: expected turn: or turns:"),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        if authority.starts_with("//") || authority.contains(['/', '@', '#']) {
            return bad(
                "RFC 7065 URIs have no \"//\", path, user or fragment: write turn:HOST:PORT",
            );
        }
        let (host, port) = split_host_port(authority).map_err(message)?;
        let port = match port {
            None => {
                if secure {
                    TURNS_PORT
                } else {
                    TURN_PORT
                }
            }
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return bad(&format!("bad port {port:?}: expected 1 to 65535")),
            },
        };
        let transport = match query {
            None => None,
            Some(query) => match query.split_once('=') {
                Some(("transport", value)) => Some(value.to_ascii_lowercase()),
                _ => {
                    return bad(
                        "the only query RFC 7065 defines is ?transport=udp or ?transport=tcp",
                    );
                }
            },
        };
        let transport = match (secure, transport.as_deref()) {
            (false, None | Some("udp")) => Transport::Udp,
            (false, Some("tcp")) => Transport::Tcp,
            (true, None | Some("tcp")) => Transport::Tls,
            (true, Some("udp")) => {
                return bad("turns: over UDP would be DTLS, which the probe does not speak");
            }
            (_, Some(other)) => {
                return bad(&format!("unknown transport {other:?}: expected udp or tcp"));
            }
        };
        Ok(TurnUrl {
            text: text.to_owned(),
            host,
            port,
            transport,
        })
    }
}

/// Splits `host[:port]`, `[v6][:port]`; the port is returned unparsed.
fn split_host_port(authority: &str) -> Result<(Host, Option<&str>), &'static str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address without its \"]\"")?;
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| "bad IPv6 address in brackets")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("junk after the IPv6 address")?,
            ),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("no host");
    }
    if port.is_some_and(|port| port.contains(':')) {
        return Err("an IPv6 address must be written in brackets: turn:[2001:db8::1]:3478");
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), port));
    }
    let name_ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !name_ok {
        return Err("bad host: expected an IP address or a DNS name");
    }
    Ok((Host::Name(host.to_ascii_lowercase()), port))
}

/// The URI as an error message shows it: control characters escaped, cut at 80 characters.
fn shown(text: &str) -> String {
    let mut shown: String = text.chars().take(80).flat_map(char::escape_debug).collect();
    if text.chars().count() > 80 {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7065_uris_parse_with_their_defaults() {
        let cases = [
            ("turn:127.0.0.1", "127.0.0.1:3478", Transport::Udp),
            (
                "turn:127.0.0.1:3479?transport=udp",
                "127.0.0.1:3479",
                Transport::Udp,
            ),
            (
                "turn:Example.org?transport=TCP",
                "example.org:3478",
                Transport::Tcp,
            ),
            ("turns:example.org", "example.org:5349", Transport::Tls),
            ("TURNS:[::1]:443?transport=tcp", "[::1]:443", Transport::Tls),
            ("turn:[2001:db8::1]", "[2001:db8::1]:3478", Transport::Udp),
        ];
        for (text, authority, transport) in cases {
            let url = TurnUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.authority(), authority, "{text}");
            assert_eq!(url.transport, transport, "{text}");
            assert_eq!(url.text, text);
        }
    }

    #[test]
    fn bad_uris_are_refused_naming_the_uri_and_the_problem() {
        let cases = [
            ("127.0.0.1:3478", "unknown scheme"),
            ("example.org", "no scheme"),
            ("stun:127.0.0.1", "STUN URI"),
            ("http://example.org", "unknown scheme"),
            ("turn://example.org", "no \"//\""),
            ("turn:user@example.org", "no \"//\""),
            ("turn:127.0.0.1:0", "bad port \"0\""),
            ("turn:127.0.0.1:65536", "bad port \"65536\""),
            ("turn:127.0.0.1:x", "bad port \"x\""),
            ("turn:127.0.0.1:", "bad port \"\""),
            (
                "turn:127.0.0.1?transport=sctp",
                "unknown transport \"sctp\"",
            ),
            ("turn:127.0.0.1?transport=tls", "unknown transport \"tls\""),
            ("turn:127.0.0.1?foo=bar", "only query"),
            ("turns:127.0.0.1?transport=udp", "DTLS"),
            ("turn:", "no host"),
            ("turn::3478", "no host"),
            ("turn:2001:db8::1", "brackets"),
            ("turn:[2001:db8::1", "without its"),
            ("turn:[nonsense]:3478", "bad IPv6"),
            ("turn:exa mple.org", "bad host"),
            ("turn:a..b", "bad host"),
            ("turn:host\u{1b}[31m", "bad host"),
        ];
        for (text, why) in cases {
            let error = TurnUrl::parse(text).expect_err(text);
            assert!(error.contains(why), "{text}: {error}");
            assert!(
                error.starts_with(&shown(text)),
                "{text}: the message names the URI: {error}"
            );
        }
        let long = format!("turn:{}.example.org", "a".repeat(MAX_URL_LEN));
        let error = TurnUrl::parse(&long).unwrap_err();
        assert!(error.contains("at most 1000"), "{error}");
        assert!(error.len() < 200, "{error}");
        assert!(!shown("turn:\u{1b}").contains('\u{1b}'));
    }
}
