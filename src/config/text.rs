//! Values written as TOML strings: the `Text<T>` wrapper that parses them with a message quoting
//! what was written, the address forms, and long-term keys as 32 hex digits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// A value written as a TOML string, parsed with an error message that quotes it.
pub(super) struct Text<T>(pub(super) T);

pub(super) trait ParseText: Sized {
    fn parse_text(text: &str) -> Result<Self, String>;
}

impl<'de, T: ParseText> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        T::parse_text(&text)
            .map(Text)
            .map_err(serde::de::Error::custom)
    }
}

impl ParseText for SocketAddr {
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("invalid socket address {text:?}, expected e.g. \"0.0.0.0:3478\""))
    }
}

impl ParseText for Ipv4Addr {
    fn parse_text(text: &str) -> Result<Self, String> {
        if text.parse::<Ipv6Addr>().is_ok() {
            return Err(format!(
                "{text:?} is an IPv6 address; this key takes an IPv4 address"
            ));
        }
        text.parse()
            .map_err(|_| format!("invalid IPv4 address {text:?}"))
    }
}

impl ParseText for Ipv6Addr {
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("invalid IPv6 address {text:?}"))
    }
}

impl ParseText for IpNet {
    fn parse_text(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(net.trunc());
        }
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("invalid IP range {text:?}, expected e.g. \"10.0.0.0/8\""))
    }
}

/// Parses a long-term key written as 32 hex digits.
pub(crate) fn parse_key(text: &str) -> Result<[u8; 16], String> {
    let problem = || {
        format!(
            "expected 32 hex digits (MD5 of name:realm:password), got {} characters",
            text.chars().count()
        )
    };
    let digits = text.as_bytes();
    if digits.len() != 32 {
        return Err(problem());
    }
    let mut key = [0u8; 16];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let high = hex_value(pair[0]);
        let low = hex_value(pair[1]);
        match (high, low) {
            (Some(high), Some(low)) => *byte = high << 4 | low,
            _ => return Err("contains a character that is not a hex digit".to_owned()),
        }
    }
    Ok(key)
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|v| v as u8)
}
