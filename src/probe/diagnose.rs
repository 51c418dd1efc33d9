//! A failed step in words: what went wrong and what is likely behind it (nothing listening, a
//! firewall, a TLS certificate for another name, wrong credentials, a relay address peers cannot
//! reach), each naming the address and transport concerned.

use std::io;
use std::net::{IpAddr, SocketAddr};

use rustls::CertificateError;

use crate::client::{ClientError, Transport};

/// Where a step talked to: `host:port` as the URI wrote it, and the transport.
pub(crate) struct Target<'a> {
    pub authority: &'a str,
    pub transport: Transport,
}

impl Target<'_> {
    /// "host:port over udp".
    fn over(&self) -> String {
        format!("{} over {}", self.authority, self.transport)
    }
}

/// Why connecting (TCP, TLS handshake) or the first Binding failed.
pub(crate) fn unreachable(error: &ClientError, target: &Target<'_>, ignored: u64) -> String {
    let over = target.over();
    match error {
        ClientError::Timeout { after, .. } if ignored > 0 => format!(
            "{over} answered {ignored} time(s) within {after:?}, never with a STUN answer: it is not a STUN/TURN server (wrong port?)"
        ),
        ClientError::Timeout { after, .. } => format!(
            "nothing answers on {over} within {after:?}: the server is down, the address or port is wrong, or a firewall drops {} to it",
            target.transport_name()
        ),
        ClientError::ConnectTimeout { after, .. } => format!(
            "nothing answers on {over}: the {} took longer than {after:?} (a firewall dropping the connection, or a wrong address)",
            if target.transport == Transport::Tls {
                "connection and TLS handshake"
            } else {
                "TCP connection"
            }
        ),
        ClientError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            format!(
                "nothing listens on {over}: connection refused (is the server running, is the port right?)"
            )
        }
        ClientError::Io(e) => match tls_problem(e, target.authority) {
            Some(problem) => problem,
            None if target.transport == Transport::Tls
                && matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::InvalidData
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                format!(
                    "the TLS handshake with {} failed ({e}): is it a TLS port? A plain TCP port is written turn:HOST:PORT?transport=tcp",
                    target.authority
                )
            }
            None => format!("{over}: {e}"),
        },
        ClientError::Closed => format!(
            "{over} closed the connection instead of answering: is it a TURN port? (a TLS port is written turns:HOST:PORT)"
        ),
        ClientError::Framing(_) => format!(
            "{over} sent bytes that are not STUN: it is not a STUN/TURN server (wrong port?)"
        ),
        ClientError::BadResponse { .. } => {
            format!("{over} sent a malformed STUN answer: is it a STUN/TURN server?")
        }
        other => format!("{over}: {other}"),
    }
}

impl Target<'_> {
    fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::Udp => "UDP",
            Transport::Tcp | Transport::Tls => "TCP",
        }
    }
}

/// A TLS verification failure in words, when `error` is one.
fn tls_problem(error: &io::Error, authority: &str) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    let fix = "pass --ca FILE with the CA that issued it, or --insecure to skip the check";
    Some(match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "TLS certificate name mismatch: the server's certificate is for {} but it was reached as {}: use a URI with one of the certificate's names, or give the server a certificate for this name",
                if presented.is_empty() {
                    "no name".to_string()
                } else {
                    presented.iter().map(|name| bare_name(name)).collect::<Vec<_>>().join(", ")
                },
                expected.to_str()
            ),
            CertificateError::NotValidForName => "TLS certificate name mismatch: the server's certificate is not valid for the name in the URI".to_string(),
            CertificateError::UnknownIssuer => format!(
                "the server's TLS certificate is not signed by a trusted CA (self-signed, or a missing intermediate certificate on the server): {fix}"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's TLS certificate has expired (or this machine's clock is wrong)".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's TLS certificate is not valid yet (or this machine's clock is wrong)".to_string()
            }
            other => format!("the server's TLS certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake with the alert {alert:?}"
        ),
        rustls::Error::InvalidMessage(_) => format!(
            "{authority} does not speak TLS ({tls}): is it a plain TCP port? That is written turn:HOST:PORT?transport=tcp"
        ),
        other => format!("TLS failed: {other}"),
    })
}

/// A name as rustls presents it (`DnsName("example.org")`, `IpAddress(..)`), without the
/// wrapper.
fn bare_name(name: &str) -> &str {
    match (name.find('"'), name.rfind('"')) {
        (Some(start), Some(end)) if start < end => &name[start + 1..end],
        _ => name,
    }
}

/// Why an Allocate failed (a 401 to a REST username is looked into by `skew`).
pub(crate) fn allocate(error: &ClientError, target: &Target<'_>, rest: bool) -> String {
    match error {
        ClientError::Response { code: 401, .. } if rest => {
            "401 for a REST username: wrong secret, or clock skew between this machine and the server".to_string()
        }
        ClientError::Response { code: 401, .. } => {
            "401 Unauthorized after the nonce exchange: wrong user name or password (or the user is not configured on this server)".to_string()
        }
        ClientError::Response { code: 486, .. } => {
            "the user's allocation quota is reached (486): the probe needs two allocations at once".to_string()
        }
        ClientError::Response { code: 508, .. } => {
            "the server has no relay port free (508): its relay port range is used up".to_string()
        }
        ClientError::Response { code: 403, .. } => {
            "the server refuses this user or this client address (403)".to_string()
        }
        ClientError::Response { code: 300, alternate: Some(to), .. } => {
            format!("the server redirects to {to} (300 Try Alternate): probe that address")
        }
        ClientError::Response { code: 441 | 442, .. } => {
            "the server does not relay UDP for this client (441/442)".to_string()
        }
        ClientError::Response { code: 438, .. } => {
            "the server kept refusing its own nonces (438)".to_string()
        }
        ClientError::Response { code, reason, .. } => format!("the server refused: {code} {reason}"),
        ClientError::Timeout { after, .. } => format!(
            "{} answered the Binding but not the Allocate within {after:?}: a STUN-only server, or an overloaded one",
            target.over()
        ),
        other => unreachable(other, target, 0),
    }
}

/// Why a CreatePermission or ChannelBind for `peer` (the other allocation's relayed address)
/// failed.
pub(crate) fn permission(error: &ClientError, peer: SocketAddr, target: &Target<'_>) -> String {
    match error {
        ClientError::Response { code: 403, .. } if is_private(peer.ip()) => format!(
            "the server's peer policy refuses {ip} (403), the other allocation's relayed address: the relay's own address is a private or special-purpose one, refused as any such peer is: give the relay a public address ([relay] address, or public-address behind a 1:1 NAT; coturn: relay-ip, external-ip), or for a test on one network allow it (turnpike: [peers] allow = [\"{ip}/32\"]; coturn: allowed-peer-ip)",
            ip = peer.ip()
        ),
        ClientError::Response { code: 403, .. } => format!(
            "the server's peer policy refuses {} (403), the other allocation's relayed address: allow it (turnpike: [peers] allow; coturn: allowed-peer-ip)",
            peer.ip()
        ),
        ClientError::Response { code, reason, .. } => {
            format!("the server refused: {code} {reason}")
        }
        other => unreachable(other, target, 0),
    }
}

/// Why datagrams sent through the relay to `relayed` never arrived.
pub(crate) fn relay_unreachable(relayed: SocketAddr, server: IpAddr) -> String {
    let mut cause = format!(
        "the relayed address {relayed} is not reachable from the other allocation: check [relay] public-address (coturn: external-ip) and that the firewall lets UDP in on the relay port range"
    );
    if is_private(relayed.ip()) && !is_private(server) {
        cause += &format!(
            " ({} is a private address: peers on the Internet cannot reach it)",
            relayed.ip()
        );
    }
    cause
}

/// Addresses nobody on the Internet can send to.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_documentation()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xC0) == 64
        }
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xFE00) == 0xFC00
                || (ip.segments()[0] & 0xFFC0) == 0xFE80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::Method;
    use std::time::Duration;

    fn target(transport: Transport) -> Target<'static> {
        Target {
            authority: "turn.example.org:3478",
            transport,
        }
    }

    #[test]
    fn timeouts_and_refusals_name_the_address_and_transport() {
        let timeout = ClientError::Timeout {
            method: Method::BINDING,
            after: Duration::from_secs(5),
        };
        let text = unreachable(&timeout, &target(Transport::Udp), 0);
        assert!(
            text.starts_with("nothing answers on turn.example.org:3478 over udp"),
            "{text}"
        );
        let text = unreachable(&timeout, &target(Transport::Udp), 3);
        assert!(text.contains("not a STUN/TURN server"), "{text}");
        let refused = ClientError::Io(io::ErrorKind::ConnectionRefused.into());
        let text = unreachable(&refused, &target(Transport::Tcp), 0);
        assert!(
            text.starts_with("nothing listens on turn.example.org:3478 over tcp"),
            "{text}"
        );
    }

    #[test]
    fn relay_addresses_peers_cannot_reach_are_called_private() {
        let relayed: SocketAddr = "10.0.0.5:50000".parse().unwrap();
        let text = relay_unreachable(relayed, "1.1.1.1".parse().unwrap());
        assert!(text.contains("10.0.0.5 is a private address"), "{text}");
        let text = relay_unreachable(relayed, "10.0.0.1".parse().unwrap());
        assert!(!text.contains("private"), "{text}");
        assert!(is_private("100.64.0.1".parse().unwrap()));
        assert!(!is_private("8.8.8.8".parse().unwrap()));
        assert!(is_private("fd00::1".parse().unwrap()));
    }
}
