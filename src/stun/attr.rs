//! Attribute type codes (RFC 8489, RFC 8656, RFC 8445, RFC 5780 and friends) and decoders that
//! turn an attribute value (padding already stripped) into a typed value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{MAGIC_COOKIE, StunError, TransactionId};

pub const MAPPED_ADDRESS: u16 = 0x0001;
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const EVEN_PORT: u16 = 0x0018;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const DONT_FRAGMENT: u16 = 0x001A;
pub const ACCESS_TOKEN: u16 = 0x001B;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
pub const USERHASH: u16 = 0x001E;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const RESERVATION_TOKEN: u16 = 0x0022;
pub const PRIORITY: u16 = 0x0024;
pub const USE_CANDIDATE: u16 = 0x0025;
pub const PADDING: u16 = 0x0026;
pub const RESPONSE_PORT: u16 = 0x0027;
pub const CONNECTION_ID: u16 = 0x002A;
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDITIONAL-ADDRESS-FAMILY under the code point of draft-ietf-tram-turnbis (before RFC
/// 8656 moved it to 0x8000), which coturn 4.6 still sends and reads.
pub const ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
pub const ICMP: u16 = 0x8004;
pub const SOFTWARE: u16 = 0x8022;
pub const ALTERNATE_SERVER: u16 = 0x8023;
pub const TRANSACTION_TRANSMIT_COUNTER: u16 = 0x8025;
pub const CACHE_TIMEOUT: u16 = 0x8027;
pub const FINGERPRINT: u16 = 0x8028;
pub const ICE_CONTROLLED: u16 = 0x8029;
pub const ICE_CONTROLLING: u16 = 0x802A;
pub const RESPONSE_ORIGIN: u16 = 0x802B;
pub const OTHER_ADDRESS: u16 = 0x802C;

/// Longest USERNAME accepted, in bytes (RFC 5389 allowed fewer than 513; RFC 8489 fewer than 509).
pub const MAX_USERNAME_LEN: usize = 513;
/// Longest REALM, NONCE, SOFTWARE or error reason accepted, in bytes (128 characters, RFC 8489).
pub const MAX_TEXT_LEN: usize = 763;

/// Address family codes used by the address attributes and REQUESTED-ADDRESS-FAMILY.
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// PASSWORD-ALGORITHM numbers (RFC 8489 §18.5): MD5 and SHA-256, neither with parameters.
pub const ALGORITHM_MD5: u16 = 0x0001;
pub const ALGORITHM_SHA256: u16 = 0x0002;

/// Whether an agent that does not understand attribute type `t` must reject the message.
pub fn is_comprehension_required(t: u16) -> bool {
    t < 0x8000
}

/// Decodes XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS or XOR-RELAYED-ADDRESS.
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, StunError> {
    let plain = decode_address(value)?;
    Ok(xor_address(plain, tid))
}

/// Decodes a plain address attribute such as MAPPED-ADDRESS or ALTERNATE-SERVER.
pub fn decode_address(value: &[u8]) -> Result<SocketAddr, StunError> {
    let (&[_reserved, family, p0, p1], ip) = value
        .split_first_chunk::<4>()
        .ok_or(StunError::BadAttributeLength)?;
    let port = u16::from_be_bytes([p0, p1]);
    let ip = match family {
        FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::from(exact::<4>(ip)?)),
        FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(exact::<16>(ip)?)),
        _ => return Err(StunError::BadAttributeValue),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Decodes an attribute made of one 32-bit number, such as LIFETIME or PRIORITY.
pub fn decode_u32(value: &[u8]) -> Result<u32, StunError> {
    exact::<4>(value).map(u32::from_be_bytes)
}

/// Decodes CHANNEL-NUMBER; the range check is left to the caller.
pub fn decode_channel_number(value: &[u8]) -> Result<u16, StunError> {
    let [n0, n1, _, _] = exact::<4>(value)?;
    Ok(u16::from_be_bytes([n0, n1]))
}

/// Decodes REQUESTED-TRANSPORT into its IANA protocol number (17 for UDP).
pub fn decode_requested_transport(value: &[u8]) -> Result<u8, StunError> {
    let [protocol, _, _, _] = exact::<4>(value)?;
    Ok(protocol)
}

/// Decodes REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY into the family byte.
pub fn decode_address_family(value: &[u8]) -> Result<u8, StunError> {
    let [family, _, _, _] = exact::<4>(value)?;
    Ok(family)
}

/// Decodes PASSWORD-ALGORITHM (RFC 8489 §14.12) into the algorithm number and its parameters;
/// the parameters' length field must match the value's size (padding is already stripped).
pub fn decode_password_algorithm(value: &[u8]) -> Result<(u16, &[u8]), StunError> {
    let (&[a0, a1, l0, l1], parameters) = value
        .split_first_chunk::<4>()
        .ok_or(StunError::BadAttributeLength)?;
    if usize::from(u16::from_be_bytes([l0, l1])) != parameters.len() {
        return Err(StunError::BadAttributeLength);
    }
    Ok((u16::from_be_bytes([a0, a1]), parameters))
}

/// Decodes USERHASH (RFC 8489 §14.4): 32 bytes.
pub fn decode_userhash(value: &[u8]) -> Result<[u8; 32], StunError> {
    exact::<32>(value)
}

/// Decodes EVEN-PORT: whether the R bit (reserve the next port too) is set.
pub fn decode_even_port(value: &[u8]) -> Result<bool, StunError> {
    match value {
        [first, ..] if value.len() <= 4 => Ok(first & 0x80 != 0),
        _ => Err(StunError::BadAttributeLength),
    }
}

/// Decodes CONNECTION-ID (RFC 6062 §6.2.1: a 32-bit number).
pub fn decode_connection_id(value: &[u8]) -> Result<u32, StunError> {
    exact::<4>(value).map(u32::from_be_bytes)
}

/// Decodes RESERVATION-TOKEN.
pub fn decode_reservation_token(value: &[u8]) -> Result<[u8; 8], StunError> {
    exact::<8>(value)
}

/// Decodes a UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE) of at most `max_len` bytes.
pub fn decode_text(value: &[u8], max_len: usize) -> Result<&str, StunError> {
    if value.len() > max_len {
        return Err(StunError::BadAttributeLength);
    }
    std::str::from_utf8(value).map_err(|_| StunError::BadAttributeValue)
}

/// Decodes ERROR-CODE into the code (300..=699) and the reason phrase.
pub fn decode_error_code(value: &[u8]) -> Result<(u16, &str), StunError> {
    let (&[_, _, class, number], reason) = value
        .split_first_chunk::<4>()
        .ok_or(StunError::BadAttributeLength)?;
    let class = u16::from(class & 0x07);
    let number = u16::from(number);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(StunError::BadAttributeValue);
    }
    Ok((class * 100 + number, decode_text(reason, MAX_TEXT_LEN)?))
}

/// Decodes ADDRESS-ERROR-CODE (RFC 8656 §18.13): the family it is about, the code, the reason.
pub fn decode_address_error_code(value: &[u8]) -> Result<(u8, u16, &str), StunError> {
    let (&[family, ..], _) = value
        .split_first_chunk::<4>()
        .ok_or(StunError::BadAttributeLength)?;
    let mut error = [0u8; 4];
    error[2..].copy_from_slice(&value[2..4]);
    let (code, _) = decode_error_code(&error)?;
    Ok((family, code, decode_text(&value[4..], MAX_TEXT_LEN)?))
}

/// The value bytes of an address attribute, as written on the wire.
pub(super) enum AddressValue {
    V4([u8; 8]),
    V6([u8; 20]),
}

impl AddressValue {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            AddressValue::V4(b) => b,
            AddressValue::V6(b) => b,
        }
    }
}

/// Encodes `addr` as an address attribute value, XORed with the cookie and `tid` if given.
pub(super) fn encode_address(addr: SocketAddr, xor_with: Option<&TransactionId>) -> AddressValue {
    let addr = match xor_with {
        Some(tid) => xor_address(addr, tid),
        None => addr,
    };
    let [p0, p1] = addr.port().to_be_bytes();
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            AddressValue::V4([0, FAMILY_IPV4, p0, p1, a, b, c, d])
        }
        IpAddr::V6(ip) => {
            let mut out = [0u8; 20];
            let head = [0, FAMILY_IPV6, p0, p1];
            for (o, b) in out.iter_mut().zip(head.into_iter().chain(ip.octets())) {
                *o = b;
            }
            AddressValue::V6(out)
        }
    }
}

/// Applies the XOR-*-ADDRESS transform; it is its own inverse.
fn xor_address(addr: SocketAddr, tid: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match addr.ip() {
        IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip) ^ MAGIC_COOKIE)),
        IpAddr::V6(ip) => {
            let mut octets = ip.octets();
            for (o, m) in octets.iter_mut().zip(cookie.into_iter().chain(tid.0)) {
                *o ^= m;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    SocketAddr::new(ip, port)
}

/// `value` as an array of exactly `N` bytes.
fn exact<const N: usize>(value: &[u8]) -> Result<[u8; N], StunError> {
    value.try_into().map_err(|_| StunError::BadAttributeLength)
}

/// Runs every decoder of this module on `value`, for tests that only care that none panics
/// and how much of the message they read.
#[cfg(test)]
pub(crate) fn decode_every_way(value: &[u8], tid: &TransactionId) {
    let _ = decode_xor_address(value, tid);
    let _ = decode_address(value);
    let _ = decode_u32(value);
    let _ = decode_channel_number(value);
    let _ = decode_requested_transport(value);
    let _ = decode_address_family(value);
    let _ = decode_even_port(value);
    let _ = decode_reservation_token(value);
    let _ = decode_text(value, MAX_TEXT_LEN);
    let _ = decode_error_code(value);
    let _ = decode_password_algorithm(value);
    let _ = decode_userhash(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    #[test]
    fn xor_address_round_trips() {
        for addr in [
            "192.0.2.1:32853".parse().unwrap(),
            "[2001:db8::1]:3478".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[::ffff:1.2.3.4]:65535".parse().unwrap(),
        ] {
            let xored = encode_address(addr, Some(&TID));
            assert_eq!(decode_xor_address(xored.as_slice(), &TID), Ok(addr));
            let plain = encode_address(addr, None);
            assert_eq!(decode_address(plain.as_slice()), Ok(addr));
        }
    }

    #[test]
    fn address_rejects_bad_family_and_length() {
        assert_eq!(decode_address(&[]), Err(StunError::BadAttributeLength));
        assert_eq!(
            decode_address(&[0, 1, 0, 1, 1, 2, 3]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(
            decode_address(&[0, 2, 0, 1, 1, 2, 3, 4]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(
            decode_address(&[0, 3, 0, 1, 1, 2, 3, 4]),
            Err(StunError::BadAttributeValue)
        );
        assert_eq!(
            decode_xor_address(&[0, 1, 0, 1, 1, 2, 3, 4, 5], &TID),
            Err(StunError::BadAttributeLength)
        );
    }

    #[test]
    fn fixed_size_decoders() {
        assert_eq!(decode_u32(&[0, 0, 2, 0x58]), Ok(600));
        assert_eq!(decode_u32(&[0, 0, 2]), Err(StunError::BadAttributeLength));
        assert_eq!(decode_u32(&[0; 5]), Err(StunError::BadAttributeLength));
        assert_eq!(decode_channel_number(&[0x40, 0x01, 0xff, 0xff]), Ok(0x4001));
        assert_eq!(
            decode_channel_number(&[0x40, 0x01]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(decode_requested_transport(&[17, 0, 0, 0]), Ok(17));
        assert_eq!(
            decode_requested_transport(&[17]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(decode_address_family(&[2, 0, 0, 0]), Ok(FAMILY_IPV6));
        assert_eq!(decode_even_port(&[0x80]), Ok(true));
        assert_eq!(decode_even_port(&[0x7f, 0, 0, 0]), Ok(false));
        assert_eq!(decode_even_port(&[]), Err(StunError::BadAttributeLength));
        assert_eq!(
            decode_even_port(&[0; 5]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(decode_reservation_token(&[7; 8]), Ok([7; 8]));
        assert_eq!(
            decode_reservation_token(&[7; 4]),
            Err(StunError::BadAttributeLength)
        );
    }

    #[test]
    fn text_limits_and_utf8() {
        assert_eq!(decode_text(b"example.org", MAX_TEXT_LEN), Ok("example.org"));
        assert_eq!(
            decode_text(&[0xff, 0xfe], 10),
            Err(StunError::BadAttributeValue)
        );
        assert_eq!(
            decode_text(&[b'a'; 514], MAX_USERNAME_LEN),
            Err(StunError::BadAttributeLength)
        );
        assert!(decode_text(&[b'a'; 513], MAX_USERNAME_LEN).is_ok());
    }

    #[test]
    fn address_error_code() {
        let mut value = vec![FAMILY_IPV6, 0, 4, 40];
        value.extend_from_slice(b"Address Family not Supported");
        assert_eq!(
            decode_address_error_code(&value),
            Ok((FAMILY_IPV6, 440, "Address Family not Supported"))
        );
        assert_eq!(
            decode_address_error_code(&[FAMILY_IPV4, 0, 5, 8]),
            Ok((FAMILY_IPV4, 508, ""))
        );
        assert_eq!(
            decode_address_error_code(&[FAMILY_IPV6, 0, 4]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(
            decode_address_error_code(&[FAMILY_IPV6, 0, 1, 0]),
            Err(StunError::BadAttributeValue)
        );
    }

    #[test]
    fn error_code() {
        let mut value = vec![0, 0, 4, 1];
        value.extend_from_slice(b"Unauthorized");
        assert_eq!(decode_error_code(&value), Ok((401, "Unauthorized")));
        assert_eq!(decode_error_code(&[0, 0, 4, 38]), Ok((438, "")));
        assert_eq!(
            decode_error_code(&[0, 0, 2, 0]),
            Err(StunError::BadAttributeValue)
        );
        assert_eq!(
            decode_error_code(&[0, 0, 4, 100]),
            Err(StunError::BadAttributeValue)
        );
        assert_eq!(
            decode_error_code(&[0, 0, 4]),
            Err(StunError::BadAttributeLength)
        );
    }

    #[test]
    fn password_algorithm_and_userhash() {
        assert_eq!(
            decode_password_algorithm(&[0, 2, 0, 0]),
            Ok((ALGORITHM_SHA256, &[][..]))
        );
        assert_eq!(
            decode_password_algorithm(&[0, 9, 0, 2, 7, 7]),
            Ok((9, &[7, 7][..]))
        );
        for bad in [
            &[][..],
            &[0, 1],
            &[0, 1, 0],
            &[0, 1, 0, 1],
            &[0, 1, 0, 0, 0],
        ] {
            assert_eq!(
                decode_password_algorithm(bad),
                Err(StunError::BadAttributeLength),
                "{bad:?}"
            );
        }
        assert_eq!(decode_userhash(&[3; 32]), Ok([3; 32]));
        assert_eq!(
            decode_userhash(&[3; 31]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(
            decode_userhash(&[3; 33]),
            Err(StunError::BadAttributeLength)
        );
    }

    #[test]
    fn comprehension() {
        assert!(is_comprehension_required(USERNAME));
        assert!(is_comprehension_required(0x7fff));
        assert!(!is_comprehension_required(SOFTWARE));
        assert!(!is_comprehension_required(FINGERPRINT));
    }
}
