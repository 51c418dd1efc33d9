//! The PROXY protocol header (HAProxy's specification, versions 1 and 2) that a load balancer
//! in front of a TCP or TLS listener sends before the client's bytes, naming the client's real
//! address. Sans-IO: [`parse`] looks at the bytes received so far and says whether they hold a
//! whole header, need more, or are not one. Nothing here trusts the sender; whether a source
//! may send a header at all is the caller's decision.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's fixed 12-byte signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version-1 line, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The longest version-2 header accepted: the 16 fixed bytes and up to 512 of addresses and
/// TLVs (ours are ignored). The specification allows 64 KiB; a balancer sends far less, and a
/// peer that declares more is refused rather than buffered.
pub const V2_MAX: usize = 16 + 512;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes; the client's stream starts after them.
    pub len: usize,
    /// The client's and the proxy's (destination) addresses; `None` for a LOCAL (v2) or
    /// UNKNOWN (v1) header, where the connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header.
    Header(Header),
    /// A header may follow: read more (at most [`V2_MAX`] bytes in all).
    Incomplete,
}

/// Why the bytes are not an acceptable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The stream does not start with either version's signature.
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header longer than accepted")]
    TooLong,
}

/// Parses a PROXY protocol header at the start of `buf`, the bytes received so far.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if starts_like(buf, &V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if starts_like(buf, V1_PREFIX) {
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

/// Whether `buf` agrees with `prefix` as far as both go (a short `buf` may still become it).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::TooLong);
        }
        if window.contains(&b'\n') || window.contains(&0) {
            return Err(ProxyError::Malformed("a line break or NUL before CRLF"));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..end])
        .map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or_default();
    if protocol == "UNKNOWN" {
        // The rest of the line is to be ignored (specification §2.1).
        return Ok(Parsed::Header(Header {
            len,
            addresses: None,
        }));
    }
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::Malformed("not four fields after the protocol"));
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyError> {
        let parsed: IpAddr = if v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
        .map_err(|_| ProxyError::Malformed("an address of the wrong family or form"))?;
        Ok(parsed)
    };
    let port = |text: &str| -> Result<u16, ProxyError> {
        // Decimal without sign or leading zeros (0 itself allowed), as the specification says.
        if text.is_empty()
            || text.len() > 5
            || !text.bytes().all(|b| b.is_ascii_digit())
            || (text.len() > 1 && text.starts_with('0'))
        {
            return Err(ProxyError::Malformed("a port that is not 0-65535"));
        }
        text.parse()
            .map_err(|_| ProxyError::Malformed("a port that is not 0-65535"))
    };
    Ok(Parsed::Header(Header {
        len,
        addresses: Some((
            SocketAddr::new(ip(source)?, port(source_port)?),
            SocketAddr::new(ip(destination)?, port(destination_port)?),
        )),
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    let family_protocol = buf[13];
    let declared = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + declared;
    if len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    match version_command & 0x0f {
        // LOCAL: the proxy's own connection (a health check); the family is to be ignored.
        0 => {
            return Ok(Parsed::Header(Header {
                len,
                addresses: None,
            }));
        }
        1 => {}
        _ => return Err(ProxyError::Malformed("command is neither LOCAL nor PROXY")),
    }
    let addresses = match family_protocol {
        // UNSPEC: addresses to be ignored, the connection's own stand.
        0x00 => None,
        // TCP over IPv4.
        0x11 => {
            let a = body
                .get(..12)
                .ok_or(ProxyError::Malformed("IPv4 addresses cut short"))?;
            let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Some((
                SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            ))
        }
        // TCP over IPv6.
        0x21 => {
            let a = body
                .get(..36)
                .ok_or(ProxyError::Malformed("IPv6 addresses cut short"))?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Some((
                SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            ))
        }
        _ => return Err(ProxyError::Malformed("not TCP over IPv4 or IPv6")),
    };
    Ok(Parsed::Header(Header { len, addresses }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn header(len: usize, source: &str, destination: &str) -> Parsed {
        Parsed::Header(Header {
            len,
            addresses: Some((addr(source), addr(destination))),
        })
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 3478\r\nrest";
        assert_eq!(
            parse(line),
            Ok(header(46, "192.0.2.7:56324", "198.51.100.1:3478"))
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n";
        assert_eq!(
            parse(line),
            Ok(header(line.len(), "[2001:db8::7]:65535", "[2001:db8::1]:0"))
        );
        let line = b"PROXY UNKNOWN whatever follows\r\n";
        assert_eq!(
            parse(line),
            Ok(Parsed::Header(Header {
                len: line.len(),
                addresses: None
            }))
        );
    }

    #[test]
    fn version_1_refusals() {
        for (line, why) in [
            (&b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], "protocol"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "four fields"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "four fields"),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "family"),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "family"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "field"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "line break"),
            (b"PROXY TCP4 1.2.3.4\0", "NUL"),
        ] {
            match parse(line) {
                Err(ProxyError::Malformed(message)) => {
                    assert!(
                        message.contains(why) || (why == "field" && message.contains("address")),
                        "{:?}: {message}",
                        String::from_utf8_lossy(line)
                    )
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
            }
        }
        // No CRLF within 107 bytes: too long, however the line goes on.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    #[test]
    fn version_2_headers() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&3478u16.to_be_bytes());
        // A TLV after the addresses is skipped with them.
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]);
        let bytes = v2(1, 0x11, &body);
        assert_eq!(
            parse(&bytes),
            Ok(header(bytes.len(), "192.0.2.7:56324", "198.51.100.1:3478"))
        );
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0xff, 0xff, 0x0d, 0x96]);
        let bytes = v2(1, 0x21, &body);
        assert_eq!(
            parse(&bytes),
            Ok(header(
                bytes.len(),
                "[2001:db8::7]:65535",
                "[2001:db8::1]:3478"
            ))
        );
        // LOCAL, whatever its family says: the connection's own addresses.
        let bytes = v2(0, 0x11, &[0; 12]);
        assert_eq!(
            parse(&bytes),
            Ok(Parsed::Header(Header {
                len: 28,
                addresses: None
            }))
        );
    }

    #[test]
    fn version_2_refusals() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyError::Malformed(_))));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        // UDP over IPv4, and AF_UNIX: not what a TURN TCP listener is sent.
        assert!(matches!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x31, &[0; 216])),
            Err(ProxyError::Malformed(_))
        ));
        // A length too short for the family's addresses.
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 11])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x21, &[0; 35])),
            Err(ProxyError::Malformed(_))
        ));
        // A declared length beyond what is accepted is refused before it is read.
        let mut huge = v2(1, 0x11, &[0; 12]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&huge[..16]), Err(ProxyError::TooLong));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete_and_other_bytes_are_refused_at_once() {
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        for whole in [
            v2(1, 0x11, &body),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n".to_vec(),
        ] {
            for cut in 0..whole.len() {
                assert_eq!(parse(&whole[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
            }
            assert!(matches!(parse(&whole), Ok(Parsed::Header(_))));
        }
        // A STUN message, a TLS ClientHello, HTTP: refused from the first byte that differs.
        for other in [
            &[0x00, 0x01, 0x00, 0x00][..],
            &[0x16, 0x03, 0x01],
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse(other), Err(ProxyError::Missing));
        }
        assert_eq!(parse(b"PROXX"), Err(ProxyError::Missing));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every prefix of a pseudo-random stream, with and without each signature in front.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2_000 {
            let mut bytes = Vec::new();
            for _ in 0..(state % 200) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            for prefix in [&[][..], &V2_SIGNATURE, V1_PREFIX] {
                let whole = [prefix, &bytes].concat();
                if let Ok(Parsed::Header(header)) = parse(&whole) {
                    assert!(header.len <= whole.len() && header.len <= V2_MAX);
                }
            }
        }
    }
}
