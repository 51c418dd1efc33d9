//! Which peers the relay may talk to: a built-in list of special-purpose ranges, the operator's
//! `[peers]` allow and deny lists, and the server's own sockets (RFC 8656 §21.1.6, §21.1.7).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Returns the IPv4 address embedded in `ip` when `ip` is an IPv6 form of one, else `ip`.
///
/// Recognised forms: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (other than `::`
/// and `::1`), 6to4 `2002:aabb:ccdd::/48`, and NAT64 `64:ff9b::a.b.c.d`. The NAT64 local-use
/// prefix `64:ff9b:1::/48` is deliberately not unwrapped: where the IPv4 address sits depends on
/// the prefix length a site chose (RFC 6052 §2.2), so guessing could let a private address
/// through under a public-looking one; it stays in the built-in list and is refused unless
/// allowed. Every policy check runs on the canonical form, so `::ffff:127.0.0.1` and
/// `2002:7f00:1::` are loopback.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = ip.to_bits();
    // Truncation keeps the last 32 bits, where these forms put the IPv4 address.
    let last_32 = Ipv4Addr::from_bits(bits as u32);
    // `::` and `::1` lie in the compatible range but are IPv6 addresses of their own.
    let compatible = COMPATIBLE.contains(bits) && bits > 1;
    if MAPPED.contains(bits) || compatible || NAT64.contains(bits) {
        Some(last_32)
    } else if SIX_TO_FOUR.contains(bits) {
        // 2002:AABB:CCDD::/48 holds the IPv4 address in bits 16..48.
        Some(Ipv4Addr::from_bits((bits >> 80) as u32))
    } else {
        None
    }
}

/// What the relay may talk to. Cheap to query: no allocation, integer masks only.
///
/// Precedence for a peer IP (always canonicalised first): a `deny` entry refuses it; else an
/// `allow` entry permits it; else it is refused when it lies in the built-in list (private,
/// loopback, link-local, multicast, documentation and other special-purpose ranges).
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Ranges,
    deny: Ranges,
    /// The server's own listening sockets, IPs canonicalised.
    own_sockets: Vec<SocketAddr>,
    /// Addresses of this host, canonicalised; a wildcard listener is reachable on each.
    local_ips: Vec<IpAddr>,
}

impl PeerPolicy {
    /// A policy with the operator's lists (`[peers]` in the configuration).
    ///
    /// Entries in IPv4-mapped form (`::ffff:a.b.c.d/n`, n >= 96) are turned into their IPv4
    /// range. `allow` entries are compared with the canonical form of a peer only;
    /// `deny` entries with both the canonical and the written form, so a deny of
    /// `2002::/16` still refuses every 6to4 peer.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        PeerPolicy {
            allow: Ranges::new(&allow),
            deny: Ranges::new(&deny),
            own_sockets: Vec::new(),
            local_ips: Vec::new(),
        }
    }

    /// The server's own sockets (listener address:port pairs, the HTTP listener later); a peer
    /// equal to one is never valid (TURN loop, RFC 8656 §21.1.7). A listener on a wildcard
    /// address (`0.0.0.0` / `::`) matches its port on any address that is loopback,
    /// unspecified, or in `local_ips`, in either address family (a `::` listener is usually
    /// dual-stack).
    pub fn with_own_sockets(mut self, sockets: Vec<SocketAddr>, local_ips: Vec<IpAddr>) -> Self {
        self.own_sockets = sockets
            .into_iter()
            .map(|s| SocketAddr::new(canonical_ip(s.ip()), s.port()))
            .collect();
        self.local_ips = local_ips.into_iter().map(canonical_ip).collect();
        self
    }

    /// May the relay send to / accept from this IP? (deny > allow > built-in; canonicalised)
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        let canonical = canonical_ip(ip);
        if self.deny.contains(canonical) || (canonical != ip && self.deny.contains(ip)) {
            return false;
        }
        if self.allow.contains(canonical) {
            return true;
        }
        !is_special_purpose(canonical)
    }

    /// Is this address one of the server's own sockets? (canonicalises the IP first)
    pub fn is_own_socket(&self, addr: SocketAddr) -> bool {
        let ip = canonical_ip(addr.ip());
        self.own_sockets.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == ip
                    // Sending to 0.0.0.0 or :: reaches this host, whatever the listener binds.
                    || ip.is_unspecified()
                    || (own.ip().is_unspecified() && self.is_local(ip)))
        })
    }

    /// Both checks a peer must pass: a permitted IP and not one of the server's own sockets.
    pub fn permits_peer(&self, addr: SocketAddr) -> bool {
        self.permits_ip(addr.ip()) && !self.is_own_socket(addr)
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local_ips.contains(&ip)
    }
}

/// Whether a canonical IP lies in the built-in list of refused ranges.
fn is_special_purpose(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let bits = v4.to_bits();
            SPECIAL_PURPOSE_V4.iter().any(|range| range.contains(bits))
        }
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            SPECIAL_PURPOSE_V6.iter().any(|range| range.contains(bits))
        }
    }
}

/// An operator's list of ranges, split by family, as integer masks.
#[derive(Clone, Debug, Default)]
struct Ranges {
    v4: Vec<V4Range>,
    v6: Vec<V6Range>,
}

impl Ranges {
    fn new(nets: &[IpNet]) -> Self {
        let mut ranges = Ranges::default();
        for net in nets {
            match *net {
                IpNet::V4(net) => ranges
                    .v4
                    .push(V4Range::new(net.network(), net.prefix_len())),
                IpNet::V6(net) => {
                    let bits = net.network().to_bits();
                    let prefix = net.prefix_len();
                    // Only the mapped form: a NAT64 or 6to4 entry names a route, not the
                    // IPv4 addresses behind it (`64:ff9b::/96` would become `0.0.0.0/0`).
                    if MAPPED.contains(bits) && prefix >= 96 {
                        let v4 = Ipv4Addr::from_bits(bits as u32);
                        ranges.v4.push(V4Range::new(v4, prefix - 96));
                    } else {
                        ranges.v6.push(V6Range::new(net.network(), prefix));
                    }
                }
            }
        }
        ranges
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let bits = v4.to_bits();
                self.v4.iter().any(|range| range.contains(bits))
            }
            IpAddr::V6(v6) => {
                let bits = v6.to_bits();
                self.v6.iter().any(|range| range.contains(bits))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct V4Range {
    network: u32,
    mask: u32,
}

impl V4Range {
    const fn new(network: Ipv4Addr, prefix: u8) -> Self {
        let mask = match u32::MAX.checked_shl(32 - prefix as u32) {
            Some(mask) => mask,
            None => 0,
        };
        V4Range {
            network: network.to_bits() & mask,
            mask,
        }
    }

    fn contains(self, ip: u32) -> bool {
        ip & self.mask == self.network
    }
}

#[derive(Clone, Copy, Debug)]
struct V6Range {
    network: u128,
    mask: u128,
}

impl V6Range {
    const fn new(network: Ipv6Addr, prefix: u8) -> Self {
        let mask = match u128::MAX.checked_shl(128 - prefix as u32) {
            Some(mask) => mask,
            None => 0,
        };
        V6Range {
            network: network.to_bits() & mask,
            mask,
        }
    }

    const fn contains(self, ip: u128) -> bool {
        ip & self.mask == self.network
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> V4Range {
    V4Range::new(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> V6Range {
    let [a, b, c, d, e, f, g, h] = segments;
    V6Range::new(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// `::ffff:0:0/96`, IPv4-mapped.
const MAPPED: V6Range = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
/// `::/96`, IPv4-compatible (deprecated), which also holds `::` and `::1`.
const COMPATIBLE: V6Range = v6([0; 8], 96);
/// `64:ff9b::/96`, the NAT64 well-known prefix (RFC 6052).
const NAT64: V6Range = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// `64:ff9b:1::/48`, the NAT64 local-use prefix (RFC 8215).
const NAT64_LOCAL: V6Range = v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48);
/// `2002::/16`, 6to4 (RFC 3056).
const SIX_TO_FOUR: V6Range = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

/// IPv4 ranges refused unless allowed (RFC 6890 and the IANA special-purpose registry).
const SPECIAL_PURPOSE_V4: [V4Range; 14] = [
    v4(0, 0, 0, 0, 8),       // "this network"
    v4(10, 0, 0, 0, 8),      // private
    v4(100, 64, 0, 0, 10),   // shared address space (carrier-grade NAT)
    v4(127, 0, 0, 0, 8),     // loopback
    v4(169, 254, 0, 0, 16),  // link-local, cloud metadata services
    v4(172, 16, 0, 0, 12),   // private
    v4(192, 0, 0, 0, 24),    // IETF protocol assignments
    v4(192, 0, 2, 0, 24),    // documentation (TEST-NET-1)
    v4(192, 168, 0, 0, 16),  // private
    v4(198, 18, 0, 0, 15),   // benchmarking
    v4(198, 51, 100, 0, 24), // documentation (TEST-NET-2)
    v4(203, 0, 113, 0, 24),  // documentation (TEST-NET-3)
    v4(224, 0, 0, 0, 4),     // multicast
    v4(240, 0, 0, 0, 4),     // reserved, and 255.255.255.255 broadcast
];

/// IPv6 ranges refused unless allowed. The IPv4-embedding ones never match a canonical address;
/// they stay listed so the list reads as the policy.
const SPECIAL_PURPOSE_V6: [V6Range; 12] = [
    v6([0; 8], 128),                           // unspecified
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback
    MAPPED,                                    // IPv4-mapped
    NAT64,                                     // NAT64 well-known prefix
    NAT64_LOCAL,                               // NAT64 local-use prefix
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments (Teredo, ...)
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    SIX_TO_FOUR,                               // 6to4
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn socket(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const SPECIAL: [&str; 18] = [
        "64:ff9b:1:abcd::808:808",
        "127.0.0.1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "169.254.169.254",
        "10.1.2.3",
        "100.64.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "2001:db8::1",
    ];

    #[test]
    fn canonical_ip_unwraps_every_ipv4_in_ipv6_form() {
        let loopback = ip("127.0.0.1");
        for form in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:7f00:1:ffff::1",
            "127.0.0.1",
        ] {
            assert_eq!(canonical_ip(ip(form)), loopback, "{form}");
        }
        for unchanged in [
            "::",
            "::1",
            "2606:4700::1111",
            "fe80::1",
            "64:ff9b:2::1",
            "64:ff9b:1:abcd::7f00:1",
        ] {
            assert_eq!(canonical_ip(ip(unchanged)), ip(unchanged), "{unchanged}");
        }
        assert_eq!(canonical_ip(ip("::2")), ip("0.0.0.2"));
    }

    #[test]
    fn special_purpose_addresses_are_refused_by_default() {
        let policy = PeerPolicy::new(Vec::new(), Vec::new());
        for address in SPECIAL {
            assert!(!policy.permits_ip(ip(address)), "{address} permitted");
        }
        for address in [
            "100::1",
            "2001::1",
            "ff02::1",
            "198.18.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "240.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!policy.permits_ip(ip(address)), "{address} permitted");
        }
    }

    #[test]
    fn public_addresses_are_permitted() {
        let policy = PeerPolicy::default();
        for address in [
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "172.32.0.1",
            "100.128.0.1",
            "2001:200::1",
        ] {
            assert!(policy.permits_ip(ip(address)), "{address} refused");
        }
    }

    #[test]
    fn allow_opens_the_built_in_list() {
        let policy = PeerPolicy::new(vec![net("127.0.0.1/32")], Vec::new());
        assert!(policy.permits_ip(ip("127.0.0.1")));
        assert!(policy.permits_ip(ip("::ffff:127.0.0.1")));
        assert!(policy.permits_ip(ip("2002:7f00:1::")));
        assert!(!policy.permits_ip(ip("127.0.0.2")));
        assert!(!policy.permits_ip(ip("::1")));
    }

    #[test]
    fn mapped_entries_become_ipv4_ranges() {
        let policy = PeerPolicy::new(
            vec![net("::ffff:10.0.0.0/104")],
            vec![net("::ffff:8.8.8.8/128")],
        );
        assert!(policy.permits_ip(ip("10.9.8.7")));
        assert!(policy.permits_ip(ip("::ffff:10.9.8.7")));
        assert!(!policy.permits_ip(ip("8.8.8.8")));
        assert!(!policy.permits_ip(ip("64:ff9b::808:808")));
        assert!(policy.permits_ip(ip("8.8.4.4")));
    }

    #[test]
    fn deny_beats_allow() {
        let policy = PeerPolicy::new(
            vec![net("10.0.0.0/8"), net("2606:4700::/32")],
            vec![
                net("10.1.0.0/16"),
                net("8.8.8.8/32"),
                net("2606:4700::1111/128"),
            ],
        );
        assert!(policy.permits_ip(ip("10.2.0.1")));
        assert!(!policy.permits_ip(ip("10.1.2.3")));
        assert!(!policy.permits_ip(ip("::ffff:10.1.2.3")));
        assert!(!policy.permits_ip(ip("8.8.8.8")));
        assert!(!policy.permits_ip(ip("::ffff:8.8.8.8")));
        assert!(policy.permits_ip(ip("8.8.4.4")));
        assert!(!policy.permits_ip(ip("2606:4700::1111")));
        assert!(policy.permits_ip(ip("2606:4700::1112")));
    }

    #[test]
    fn deny_matches_the_written_form_too() {
        let policy = PeerPolicy::new(Vec::new(), vec![net("2002::/16"), net("64:ff9b::/96")]);
        assert!(!policy.permits_ip(ip("2002:808:808::1")));
        assert!(!policy.permits_ip(ip("64:ff9b::808:808")));
        assert!(policy.permits_ip(ip("8.8.8.8")));
    }

    #[test]
    fn own_sockets_are_detected() {
        let policy = PeerPolicy::default().with_own_sockets(
            vec![
                socket("0.0.0.0:3478"),
                socket("192.0.2.10:5349"),
                socket("[::]:8080"),
            ],
            vec![ip("192.0.2.10"), ip("2001:db8::10")],
        );
        for own in [
            "127.0.0.1:3478",
            "127.9.9.9:3478",
            "0.0.0.0:3478",
            "192.0.2.10:3478",
            "[::ffff:127.0.0.1]:3478",
            "[::ffff:192.0.2.10]:3478",
            "[::1]:3478",
            "192.0.2.10:5349",
            "[::ffff:192.0.2.10]:5349",
            "0.0.0.0:5349",
            "[2001:db8::10]:8080",
            "127.0.0.1:8080",
            "[::]:8080",
        ] {
            assert!(policy.is_own_socket(socket(own)), "{own} not detected");
            assert!(!policy.permits_peer(socket(own)), "{own} permitted");
        }
        for other in [
            "127.0.0.1:3479",
            "8.8.8.8:3478",
            "192.0.2.11:3478",
            "127.0.0.1:5349",
            "[2001:db8::11]:8080",
        ] {
            assert!(!policy.is_own_socket(socket(other)), "{other} detected");
        }
    }

    #[test]
    fn permits_peer_needs_both_checks() {
        let policy = PeerPolicy::new(vec![net("127.0.0.1/32")], Vec::new())
            .with_own_sockets(vec![socket("0.0.0.0:3478")], Vec::new());
        assert!(policy.permits_peer(socket("127.0.0.1:40000")));
        assert!(!policy.permits_peer(socket("127.0.0.1:3478")));
        assert!(!policy.permits_peer(socket("10.0.0.1:40000")));
        assert!(policy.permits_peer(socket("8.8.8.8:3478")));
    }
}
