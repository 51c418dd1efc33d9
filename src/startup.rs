//! What `serve` prints once it is ready, for the person who just started it: where it listens,
//! the relay address clients and peers will see (with a warning when peers on the Internet
//! cannot reach it), the dashboard URL (with the token when it was made at start), and an
//! `iceServers` snippet for the configured listeners.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use turnpike::config::{Config, Transport};
use turnpike::net::BoundListener;

/// The start-up summary, a few lines of text.
pub(crate) fn summary(
    config: &Config,
    listeners: &[BoundListener],
    relay_v4: Option<Ipv4Addr>,
    http: Option<(std::net::SocketAddr, Option<&str>)>,
) -> String {
    let mut out = String::new();
    let listening: Vec<String> = listeners
        .iter()
        .map(|l| format!("{} {}", l.transport, l.address))
        .collect();
    let _ = writeln!(out, "turnpike is ready: realm {}", config.realm);
    let _ = writeln!(out, "  listening on  {}", listening.join(", "));
    let advertised = config.relay.public_address.or(relay_v4);
    let ports = format!(
        "ports {}-{}",
        config.relay.ports.first, config.relay.ports.last
    );
    match advertised {
        Some(ip) => {
            let _ = writeln!(
                out,
                "  relay address {ip} ({ports}), as clients and peers see it"
            );
            if let Some(why) = unreachable_from_internet(IpAddr::V4(ip)) {
                let _ = writeln!(
                    out,
                    "  warning: {ip} is {why}: peers on the Internet cannot reach it. Fine for a test on this network; \
                     for a public server set [relay] public-address (behind a 1:1 NAT) or [relay] address"
                );
            }
        }
        None => {
            let _ = writeln!(out, "  relay address: none for IPv4");
        }
    }
    if let Some(v6) = config.relay.address_v6 {
        let _ = writeln!(out, "  relay address {v6} (IPv6)");
    }
    match http {
        Some((address, Some(token))) => {
            let _ = writeln!(
                out,
                "  dashboard     http://{address}/#token={token}\n                \
                 (this token was made at start and changes at each start; set [http] token to keep one)"
            );
        }
        Some((address, None)) => {
            let _ = writeln!(
                out,
                "  dashboard     http://{address}/ (it asks for [http] token)"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  dashboard     off: add an [http] section (see config/turnpike.toml)"
            );
        }
    }
    let urls = ice_urls(config, listeners, advertised);
    if !urls.is_empty() {
        let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        let (username, credential) = match config.auth.users.first() {
            Some(user) => (
                format!("{:?}", user.name),
                format!("\"<{}'s password>\"", user.name),
            ),
            None => (
                "\"<from `turnpike credentials` or POST /api/v1/credentials>\"".to_owned(),
                "\"<its credential>\"".to_owned(),
            ),
        };
        let _ = writeln!(
            out,
            "  iceServers    [{{ urls: [{}], username: {username}, credential: {credential} }}]",
            quoted.join(", ")
        );
    }
    out
}

/// The URLs for `iceServers`: `[http] ice-urls` when set, else one per listener, named by the
/// listener's own address or, on a wildcard listener, by the relay address clients see.
fn ice_urls(
    config: &Config,
    listeners: &[BoundListener],
    advertised: Option<Ipv4Addr>,
) -> Vec<String> {
    if let Some(http) = &config.http
        && !http.ice_urls.is_empty()
    {
        return http.ice_urls.clone();
    }
    listeners
        .iter()
        .filter_map(|l| {
            let ip = if l.address.ip().is_unspecified() {
                IpAddr::V4(advertised?)
            } else {
                l.address.ip()
            };
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            let port = l.address.port();
            Some(match l.transport {
                Transport::Udp => format!("turn:{host}:{port}?transport=udp"),
                Transport::Tcp => format!("turn:{host}:{port}?transport=tcp"),
                Transport::Tls => format!("turns:{host}:{port}?transport=tcp"),
            })
        })
        .collect()
}

/// Why peers on the Internet cannot reach `ip`, if they cannot.
fn unreachable_from_internet(ip: IpAddr) -> Option<&'static str> {
    let IpAddr::V4(v4) = ip else {
        return None;
    };
    let [a, b, c, _] = v4.octets();
    Some(if v4.is_loopback() {
        "a loopback address"
    } else if v4.is_private() {
        "a private address (RFC 1918)"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared address (RFC 6598, carrier-grade NAT)"
    } else if v4.is_link_local() {
        "a link-local address"
    } else if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113)
    {
        "a documentation address (RFC 5737)"
    } else if v4.is_unspecified() {
        "the unspecified address"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_peers_cannot_reach_are_named() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("192.168.1.20", "private"),
            ("172.16.0.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("169.254.1.1", "link-local"),
            ("192.0.2.7", "documentation"),
            ("203.0.113.9", "documentation"),
        ] {
            let found = unreachable_from_internet(ip.parse().unwrap());
            assert!(found.is_some_and(|f| f.contains(why)), "{ip}: {found:?}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "172.32.0.1", "2001:db8::1"] {
            assert_eq!(unreachable_from_internet(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
