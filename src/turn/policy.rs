//! Which peers the relay may talk to: a built-in table of address ranges, the operator's
//! `[peers]` allow and deny lists, and the server's own sockets (RFC 8656 §21.1.6, §21.1.7).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Returns the IPv4 address embedded in `ip` when `ip` is an IPv6 form of one, else `ip`.
///
/// Recognised forms: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated (SIIT, RFC 2765)
/// `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d` (other than `::` and `::1`), 6to4
/// `2002:aabb:ccdd::/48`, and NAT64 `64:ff9b::a.b.c.d`. The NAT64 local-use prefix
/// `64:ff9b:1::/48` is deliberately not unwrapped: where the IPv4 address sits depends on the
/// prefix length a site chose (RFC 6052 §2.2), so guessing could let a private address through
/// under a public-looking one; it is refused unless allowed. Every policy check runs on the
/// canonical form, so `::ffff:127.0.0.1`, `::ffff:0:127.0.0.1` and `2002:7f00:1::` are loopback.
#[inline]
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
    if MAPPED.contains(bits) || TRANSLATED.contains(bits) || compatible || NAT64.contains(bits) {
        Some(last_32)
    } else if SIX_TO_FOUR.contains(bits) {
        // 2002:AABB:CCDD::/48 holds the IPv4 address in bits 16..48.
        Some(Ipv4Addr::from_bits((bits >> 80) as u32))
    } else {
        None
    }
}

/// The addresses of this host's interfaces, canonicalised, sorted and without duplicates, as
/// the I/O layer last enumerated them; cheap to clone (one shared slice). A listener on a
/// wildcard address is reachable on each of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAddresses(Arc<[IpAddr]>);

impl HostAddresses {
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut addresses: Vec<IpAddr> = addresses.into_iter().map(canonical_ip).collect();
        addresses.sort_unstable();
        addresses.dedup();
        HostAddresses(addresses.into())
    }

    /// Whether `ip` (already canonical) is one of them: a binary search, no allocation.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.binary_search(&ip).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0.iter().copied()
    }
}

/// What the relay may talk to. Cheap to query: no allocation, integer masks only.
///
/// Precedence for a peer IP (always canonicalised first): a `deny` entry refuses it; else an
/// `allow` entry permits it; else the built-in table decides (see [`BUILT_IN_V4`] and
/// [`BUILT_IN_V6`]): for IPv6 only global unicast `2000::/3` minus its special-purpose ranges
/// is permitted. Whatever these say, the server's own sockets are never valid peers.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Ranges,
    deny: Ranges,
    /// The server's own listening sockets, IPs canonicalised.
    own_sockets: Vec<SocketAddr>,
    /// Addresses the configuration gives this host (relay, public), canonicalised.
    local_ips: Vec<IpAddr>,
    /// Addresses of this host's interfaces, refreshed by the I/O layer.
    host: HostAddresses,
}

impl PeerPolicy {
    /// A policy with the operator's lists (`[peers]` in the configuration).
    ///
    /// Entries in IPv4-mapped (`::ffff:a.b.c.d/n`) or IPv4-translated (`::ffff:0:a.b.c.d/n`)
    /// form, n >= 96, are turned into their IPv4 range. `allow` entries are compared with the
    /// canonical form of a peer only; `deny` entries with both the canonical and the written
    /// form, so a deny of `2002::/16` still refuses every 6to4 peer.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        PeerPolicy {
            allow: Ranges::new(&allow),
            deny: Ranges::new(&deny),
            own_sockets: Vec::new(),
            local_ips: Vec::new(),
            host: HostAddresses::default(),
        }
    }

    /// The server's own sockets (listener address:port pairs, the HTTP listener); a peer equal
    /// to one is never valid (TURN loop, RFC 8656 §21.1.7). A listener on a wildcard address
    /// (`0.0.0.0` / `::`) matches its port on any address that is loopback, unspecified, in
    /// `local_ips` or one of the [host addresses](Self::set_host_addresses), in either address
    /// family (a peer of the other family is refused too: the cautious side).
    pub fn with_own_sockets(mut self, sockets: Vec<SocketAddr>, local_ips: Vec<IpAddr>) -> Self {
        self.own_sockets = sockets
            .into_iter()
            .map(|s| SocketAddr::new(canonical_ip(s.ip()), s.port()))
            .collect();
        self.local_ips = local_ips.into_iter().map(canonical_ip).collect();
        self
    }

    /// The policy with these addresses of this host's interfaces.
    pub fn with_host_addresses(mut self, host: HostAddresses) -> Self {
        self.host = host;
        self
    }

    /// Replaces the addresses of this host's interfaces (they change while the server runs).
    pub fn set_host_addresses(&mut self, host: HostAddresses) {
        self.host = host;
    }

    /// The addresses of this host's interfaces the policy knows.
    pub fn host_addresses(&self) -> &HostAddresses {
        &self.host
    }

    /// May the relay send to / accept from this IP? (deny > allow > built-in; canonicalised)
    #[inline]
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        let canonical = canonical_ip(ip);
        if self.deny.contains(canonical) || (canonical != ip && self.deny.contains(ip)) {
            return false;
        }
        if self.allow.contains(canonical) {
            return true;
        }
        built_in(canonical) == Decision::Permit
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
        ip.is_loopback() || self.local_ips.contains(&ip) || self.host.contains(ip)
    }
}

/// What the built-in table does with the addresses of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Relayed to, unless a `deny` entry covers it.
    Permit,
    /// Refused, unless an `allow` entry covers it.
    Refuse,
    /// An IPv6 spelling of an IPv4 address: judged as that address (see [`canonical_ip`]).
    AsIpv4,
}

/// The built-in decision for a canonical IP: that of the most specific row holding it.
pub fn built_in(ip: IpAddr) -> Decision {
    let decision = match ip {
        IpAddr::V4(v4) => most_specific(&BUILT_IN_V4, v4.to_bits()),
        IpAddr::V6(v6) => most_specific(&BUILT_IN_V6, v6.to_bits()),
    };
    match decision {
        // A canonical address is never in such a row; refuse rather than guess.
        Decision::AsIpv4 => Decision::Refuse,
        decision => decision,
    }
}

fn most_specific<R: Range>(table: &[Row<R>], bits: R::Bits) -> Decision {
    let mut best: Option<&Row<R>> = None;
    for row in table {
        if row.range.holds(bits) && best.is_none_or(|b| row.range.prefix() > b.range.prefix()) {
            best = Some(row);
        }
    }
    // Each table starts with a /0 row, so something always matches.
    best.map_or(Decision::Refuse, |row| row.decision)
}

/// One row of the built-in table: a range, what it is, the decision, where it is defined.
#[derive(Clone, Copy, Debug)]
pub struct Row<R> {
    pub range: R,
    pub what: &'static str,
    pub decision: Decision,
    pub source: &'static str,
}

const fn row<R>(range: R, what: &'static str, decision: Decision, source: &'static str) -> Row<R> {
    Row {
        range,
        what,
        decision,
        source,
    }
}

use Decision::{AsIpv4, Permit, Refuse};

/// The built-in IPv4 table (IANA IPv4 Special-Purpose Address Registry, RFC 6890); the most
/// specific row holding an address decides.
#[rustfmt::skip]
pub const BUILT_IN_V4: [Row<V4Range>; 15] = [
    row(v4(0, 0, 0, 0, 0), "IPv4 not listed below", Permit, "RFC 791"),
    row(v4(0, 0, 0, 0, 8), "\"this network\"", Refuse, "RFC 1122 §3.2.1.3"),
    row(v4(10, 0, 0, 0, 8), "private", Refuse, "RFC 1918"),
    row(v4(100, 64, 0, 0, 10), "shared address space (carrier-grade NAT)", Refuse, "RFC 6598"),
    row(v4(127, 0, 0, 0, 8), "loopback", Refuse, "RFC 1122 §3.2.1.3"),
    row(v4(169, 254, 0, 0, 16), "link-local, cloud metadata services", Refuse, "RFC 3927"),
    row(v4(172, 16, 0, 0, 12), "private", Refuse, "RFC 1918"),
    row(v4(192, 0, 0, 0, 24), "IETF protocol assignments", Refuse, "RFC 6890"),
    row(v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)", Refuse, "RFC 5737"),
    row(v4(192, 168, 0, 0, 16), "private", Refuse, "RFC 1918"),
    row(v4(198, 18, 0, 0, 15), "benchmarking", Refuse, "RFC 2544"),
    row(v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)", Refuse, "RFC 5737"),
    row(v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)", Refuse, "RFC 5737"),
    row(v4(224, 0, 0, 0, 4), "multicast", Refuse, "RFC 5771"),
    row(v4(240, 0, 0, 0, 4), "reserved, and 255.255.255.255 broadcast", Refuse, "RFC 1112, RFC 919"),
];

/// The built-in IPv6 table: only global unicast `2000::/3` is permitted, minus the ranges of
/// the IANA IPv6 Special-Purpose Address Registry inside it; IPv6 forms of IPv4 addresses are
/// judged as the IPv4 address. The most specific row holding an address decides.
#[rustfmt::skip]
pub const BUILT_IN_V6: [Row<V6Range>; 30] = [
    row(v6([0; 8], 0), "IPv6 outside 2000::/3 not listed below (reserved by the IETF: ::/8 leftovers, 400::/6, 4000::/3 to f800::/6, fe00::/9, ...)", Refuse, "RFC 4291 §2.4"),
    row(v6([0; 8], 128), "unspecified", Refuse, "RFC 4291 §2.5.2"),
    row(v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback", Refuse, "RFC 4291 §2.5.3"),
    row(COMPATIBLE, "IPv4-compatible (deprecated)", AsIpv4, "RFC 4291 §2.5.5.1"),
    row(MAPPED, "IPv4-mapped", AsIpv4, "RFC 4291 §2.5.5.2"),
    row(TRANSLATED, "IPv4-translated (SIIT)", AsIpv4, "RFC 2765 §2.1"),
    row(NAT64, "NAT64 well-known prefix", AsIpv4, "RFC 6052 §2.1"),
    row(NAT64_LOCAL, "NAT64 local-use prefix (where the IPv4 address sits is the site's choice)", Refuse, "RFC 8215"),
    row(v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only", Refuse, "RFC 6666"),
    row(v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3), "global unicast not listed below", Permit, "RFC 4291 §2.4, RFC 3587"),
    row(v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), "IETF protocol assignments", Refuse, "RFC 2928"),
    row(v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "Teredo", Refuse, "RFC 4380"),
    row(v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128), "Port Control Protocol anycast", Refuse, "RFC 7723"),
    row(v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128), "TURN anycast", Refuse, "RFC 8155"),
    row(v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128), "DNS-SD Service Registration Protocol anycast", Refuse, "RFC 9665"),
    row(v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "benchmarking", Refuse, "RFC 5180"),
    row(v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32), "AMT (multicast tunnelling)", Refuse, "RFC 7450"),
    row(v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48), "AS112-v6", Refuse, "RFC 7535"),
    row(v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), "ORCHID (deprecated)", Refuse, "RFC 4843"),
    row(v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28), "ORCHIDv2 (identifiers, not locators)", Refuse, "RFC 7343"),
    row(v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28), "DRIP entity tags (identifiers, not locators)", Refuse, "RFC 9374"),
    row(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation", Refuse, "RFC 3849"),
    row(SIX_TO_FOUR, "6to4", AsIpv4, "RFC 3056"),
    row(v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48), "AS112 direct delegation (ordinary global unicast)", Permit, "RFC 7534"),
    row(v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation", Refuse, "RFC 9637"),
    row(v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), "SRv6 segment identifiers", Refuse, "RFC 9602"),
    row(v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local", Refuse, "RFC 4193"),
    row(v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local", Refuse, "RFC 4291 §2.5.6"),
    row(v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local (deprecated)", Refuse, "RFC 3879"),
    row(v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast", Refuse, "RFC 4291 §2.7"),
];

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
                    // Only the mapped and translated forms, which are IPv4 addresses and
                    // nothing else: a NAT64 or 6to4 entry names a route, not the IPv4
                    // addresses behind it (`64:ff9b::/96` would become `0.0.0.0/0`).
                    if (MAPPED.contains(bits) || TRANSLATED.contains(bits)) && prefix >= 96 {
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

/// A prefix of either family, for the table lookup.
pub trait Range {
    type Bits: Copy;
    fn holds(&self, bits: Self::Bits) -> bool;
    fn prefix(&self) -> u8;
    /// `network/prefix`, as an operator would write it.
    fn net(&self) -> IpNet;
}

/// An IPv4 prefix as a network and a mask.
#[derive(Clone, Copy, Debug)]
pub struct V4Range {
    network: u32,
    mask: u32,
    prefix: u8,
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
            prefix,
        }
    }

    fn contains(self, ip: u32) -> bool {
        ip & self.mask == self.network
    }
}

impl Range for V4Range {
    type Bits = u32;

    fn holds(&self, bits: u32) -> bool {
        self.contains(bits)
    }

    fn prefix(&self) -> u8 {
        self.prefix
    }

    fn net(&self) -> IpNet {
        // The prefix of a V4Range is at most 32 (the constants are written so).
        ipnet::Ipv4Net::new(Ipv4Addr::from_bits(self.network), self.prefix)
            .map_or_else(|_| IpNet::V4(Default::default()), IpNet::V4)
    }
}

/// An IPv6 prefix as a network and a mask.
#[derive(Clone, Copy, Debug)]
pub struct V6Range {
    network: u128,
    mask: u128,
    prefix: u8,
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
            prefix,
        }
    }

    const fn contains(self, ip: u128) -> bool {
        ip & self.mask == self.network
    }
}

impl Range for V6Range {
    type Bits = u128;

    fn holds(&self, bits: u128) -> bool {
        self.contains(bits)
    }

    fn prefix(&self) -> u8 {
        self.prefix
    }

    fn net(&self) -> IpNet {
        // The prefix of a V6Range is at most 128 (the constants are written so).
        ipnet::Ipv6Net::new(Ipv6Addr::from_bits(self.network), self.prefix)
            .map_or_else(|_| IpNet::V6(Default::default()), IpNet::V6)
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
/// `::ffff:0:0:0/96`, IPv4-translated (SIIT, RFC 2765; not the mapped form above).
const TRANSLATED: V6Range = v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96);
/// `::/96`, IPv4-compatible (deprecated), which also holds `::` and `::1`.
const COMPATIBLE: V6Range = v6([0; 8], 96);
/// `64:ff9b::/96`, the NAT64 well-known prefix (RFC 6052).
const NAT64: V6Range = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// `64:ff9b:1::/48`, the NAT64 local-use prefix (RFC 8215).
const NAT64_LOCAL: V6Range = v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48);
/// `2002::/16`, 6to4 (RFC 3056).
const SIX_TO_FOUR: V6Range = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

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

    /// Every range of the tables, by hand: an address at or near each edge and the default
    /// policy's answer (no `allow`, no `deny`).
    const DEFAULT_DECISIONS: &[(&str, bool)] = &[
        // IPv4.
        ("0.0.0.0", false),
        ("0.255.255.255", false),
        ("1.0.0.0", true),
        ("9.255.255.255", true),
        ("10.0.0.0", false),
        ("10.255.255.255", false),
        ("11.0.0.0", true),
        ("100.63.255.255", true),
        ("100.64.0.1", false),
        ("100.127.255.255", false),
        ("100.128.0.1", true),
        ("127.0.0.1", false),
        ("127.255.255.255", false),
        ("169.254.169.254", false),
        ("169.255.0.1", true),
        ("172.15.255.255", true),
        ("172.16.0.1", false),
        ("172.31.255.255", false),
        ("172.32.0.1", true),
        ("192.0.0.8", false),
        ("192.0.1.1", true),
        ("192.0.2.1", false),
        ("192.168.1.1", false),
        ("198.17.255.255", true),
        ("198.18.0.1", false),
        ("198.19.255.255", false),
        ("198.20.0.1", true),
        ("198.51.100.1", false),
        ("203.0.113.1", false),
        ("8.8.8.8", true),
        ("223.255.255.255", true),
        ("224.0.0.1", false),
        ("239.255.255.255", false),
        ("240.0.0.1", false),
        ("255.255.255.255", false),
        // IPv6 outside 2000::/3.
        ("::", false),
        ("::1", false),
        ("::2", false), // compatible form of 0.0.0.2
        ("::8.8.8.8", true),
        ("::ffff:8.8.8.8", true),
        ("::ffff:10.0.0.1", false),
        ("::ffff:0:8.8.8.8", true),
        ("::ffff:0:10.0.0.1", false),
        ("::ffff:0:a00:1", false),
        ("::ffff:0:127.0.0.1", false),
        ("::ffff:1:808:808", false), // neither mapped nor translated: reserved ::/8
        ("::1:0:0:0", false),
        ("64:ff9b::808:808", true),
        ("64:ff9b::a9fe:a9fe", false),
        ("64:ff9b:1::808:808", false),
        ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", false),
        ("100::", false),
        ("100::ffff:ffff:ffff:ffff", false),
        ("100:0:0:1::1", false),
        ("200::1", false),
        ("400::1", false),
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("4000::", false),
        ("5f00::1", false),
        ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("8000::1", false),
        ("e000::1", false),
        ("fc00::1", false),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("fe00::1", false),
        ("fe80::1", false),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("fec0::1", false),
        ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("ff02::1", false),
        ("ff0e::1", false),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        // 2000::/3 and its special-purpose ranges.
        ("2000::", true),
        ("2000::1", true),
        ("2001::", false),
        ("2001::1", false),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false), // Teredo
        ("2001:1::1", false),
        ("2001:1::2", false),
        ("2001:1::3", false),
        ("2001:1::4", false),
        ("2001:2::1", false),
        ("2001:2:0:ffff::1", false),
        ("2001:3::1", false),
        ("2001:4:112::1", false),
        ("2001:10::1", false),
        ("2001:20::1", false),
        ("2001:30::1", false),
        ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("2001:200::", true),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("2001:db8::", false),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("2001:db9::", true),
        ("2002::", false), // 6to4 of 0.0.0.0
        ("2002:808:808::1", true),
        ("2002:a00:1::1", false),
        ("2002:7f00:1:ffff::1", false),
        ("2003::1", true),
        ("2606:4700::1111", true),
        ("2620:4f:8000::53", true),
        ("2a00:1450:4001::1", true),
        ("3ffe::1", true),
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("3fff::", false),
        ("3fff::1", false),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("3fff:1000::", true),
        ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
    ];

    #[test]
    fn default_policy_decides_every_range_at_its_edges() {
        let policy = PeerPolicy::default();
        let wrong: Vec<String> = DEFAULT_DECISIONS
            .iter()
            .filter(|&&(address, permitted)| policy.permits_ip(ip(address)) != permitted)
            .map(|(address, permitted)| format!("{address}: expected permitted={permitted}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Every row's first and last address get the row's decision when no more specific row
    /// holds them, and the rows that say "as IPv4" are exactly the forms `canonical_ip`
    /// unwraps: the table printed in the README is the behaviour.
    #[test]
    fn every_row_of_the_tables_is_what_the_lookup_does() {
        fn check<R: Range>(table: &[Row<R>]) -> usize {
            let mut checked = 0;
            for row in table {
                let net = row.range.net();
                for address in [net.network(), net.broadcast()] {
                    let more_specific = table.iter().any(|other| {
                        other.range.prefix() > row.range.prefix()
                            && other.range.net().contains(&address)
                    });
                    if more_specific {
                        continue;
                    }
                    let canonical = canonical_ip(address);
                    match row.decision {
                        Decision::AsIpv4 => {
                            assert!(canonical.is_ipv4(), "{address} ({}) not unwrapped", net);
                        }
                        decision => {
                            assert_eq!(canonical, address, "{address} ({net}) unwrapped");
                            assert_eq!(built_in(address), decision, "{address} ({net})");
                        }
                    }
                    checked += 1;
                }
            }
            checked
        }
        let checked = check(&BUILT_IN_V4) + check(&BUILT_IN_V6);
        assert!(checked >= 2 * (BUILT_IN_V4.len() + BUILT_IN_V6.len()) - 8);
    }

    /// The tables as the README's Security section shows them (`--nocapture` prints it).
    #[test]
    fn tables_render_as_markdown() {
        fn render<R: Range>(table: &[Row<R>], out: &mut Vec<String>) {
            for row in table {
                let decision = match row.decision {
                    Decision::Permit => "permitted",
                    Decision::Refuse => "refused",
                    Decision::AsIpv4 => "as the IPv4 address it holds",
                };
                out.push(format!(
                    "| `{}` | {} | {decision} | {} |",
                    row.range.net(),
                    row.what,
                    row.source
                ));
            }
        }
        let mut lines = vec![
            "| range | what it is | default | source |".to_owned(),
            "| --- | --- | --- | --- |".to_owned(),
        ];
        render(&BUILT_IN_V4, &mut lines);
        render(&BUILT_IN_V6, &mut lines);
        eprintln!("{}", lines.join("\n"));
        assert_eq!(lines.len(), 2 + BUILT_IN_V4.len() + BUILT_IN_V6.len());
        assert!(lines.contains(
            &"| `2000::/3` | global unicast not listed below | permitted | RFC 4291 §2.4, RFC 3587 |"
                .to_owned()
        ));
    }

    #[test]
    fn canonical_ip_unwraps_every_ipv4_in_ipv6_form() {
        let loopback = ip("127.0.0.1");
        for form in [
            "::ffff:127.0.0.1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:7f00:1",
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
            "::ffff:1:7f00:1",
            "::1:ffff:0:7f00:1",
            "0:0:0:1:ffff:0:7f00:1",
        ] {
            assert_eq!(canonical_ip(ip(unchanged)), ip(unchanged), "{unchanged}");
        }
        assert_eq!(canonical_ip(ip("::2")), ip("0.0.0.2"));
        assert_eq!(canonical_ip(ip("::ffff:0:0:0")), ip("0.0.0.0"));
        assert_eq!(
            canonical_ip(ip("::ffff:0:ffff:ffff")),
            ip("255.255.255.255")
        );
    }

    #[test]
    fn allow_opens_the_built_in_table() {
        let policy = PeerPolicy::new(
            vec![net("127.0.0.1/32"), net("fec0::/10"), net("fd77::/16")],
            Vec::new(),
        );
        assert!(policy.permits_ip(ip("127.0.0.1")));
        assert!(policy.permits_ip(ip("::ffff:127.0.0.1")));
        assert!(policy.permits_ip(ip("::ffff:0:127.0.0.1")));
        assert!(policy.permits_ip(ip("2002:7f00:1::")));
        assert!(policy.permits_ip(ip("fec0::1")));
        assert!(policy.permits_ip(ip("fd77::1")));
        assert!(!policy.permits_ip(ip("fd78::1")));
        assert!(!policy.permits_ip(ip("127.0.0.2")));
        assert!(!policy.permits_ip(ip("::ffff:0:127.0.0.2")));
        assert!(!policy.permits_ip(ip("::1")));
    }

    #[test]
    fn mapped_and_translated_entries_become_ipv4_ranges() {
        let policy = PeerPolicy::new(
            vec![net("::ffff:10.0.0.0/104"), net("::ffff:0:172.16.0.0/108")],
            vec![net("::ffff:8.8.8.8/128"), net("::ffff:0:1.1.1.1/128")],
        );
        for permitted in [
            "10.9.8.7",
            "::ffff:10.9.8.7",
            "::ffff:0:10.9.8.7",
            "172.16.0.1",
            "::ffff:172.31.0.1",
            "::ffff:0:172.31.0.1",
            "8.8.4.4",
        ] {
            assert!(policy.permits_ip(ip(permitted)), "{permitted} refused");
        }
        for refused in [
            "8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::808:808",
            "1.1.1.1",
            "::ffff:1.1.1.1",
            "2002:101:101::1",
            "::ffff:0:192.168.0.1",
            "192.168.0.1",
        ] {
            assert!(!policy.permits_ip(ip(refused)), "{refused} permitted");
        }
    }

    #[test]
    fn deny_beats_allow() {
        let policy = PeerPolicy::new(
            vec![net("10.0.0.0/8"), net("2606:4700::/32"), net("fd00::/8")],
            vec![
                net("10.1.0.0/16"),
                net("8.8.8.8/32"),
                net("2606:4700::1111/128"),
                net("fd00:1::/32"),
            ],
        );
        assert!(policy.permits_ip(ip("10.2.0.1")));
        assert!(!policy.permits_ip(ip("10.1.2.3")));
        assert!(!policy.permits_ip(ip("::ffff:10.1.2.3")));
        assert!(!policy.permits_ip(ip("::ffff:0:10.1.2.3")));
        assert!(!policy.permits_ip(ip("8.8.8.8")));
        assert!(!policy.permits_ip(ip("::ffff:8.8.8.8")));
        assert!(policy.permits_ip(ip("8.8.4.4")));
        assert!(!policy.permits_ip(ip("2606:4700::1111")));
        assert!(policy.permits_ip(ip("2606:4700::1112")));
        assert!(policy.permits_ip(ip("fd00:2::1")));
        assert!(!policy.permits_ip(ip("fd00:1::1")));
    }

    #[test]
    fn deny_matches_the_written_form_too() {
        let policy = PeerPolicy::new(Vec::new(), vec![net("2002::/16"), net("64:ff9b::/96")]);
        assert!(!policy.permits_ip(ip("2002:808:808::1")));
        assert!(!policy.permits_ip(ip("64:ff9b::808:808")));
        assert!(policy.permits_ip(ip("8.8.8.8")));
        assert!(policy.permits_ip(ip("::ffff:0:8.8.8.8")));
        // `::ffff:0:0:0/97` is 0.0.0.0/1 in translated form: it denies those IPv4 addresses
        // in every spelling, and no other.
        let policy = PeerPolicy::new(Vec::new(), vec![net("::ffff:0:0:0/97")]);
        for refused in [
            "8.8.8.8",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(!policy.permits_ip(ip(refused)), "{refused} permitted");
        }
        assert!(policy.permits_ip(ip("200.1.1.1")));
        assert!(policy.permits_ip(ip("::ffff:0:200.1.1.1")));
    }

    #[test]
    fn host_addresses_are_sorted_canonical_and_unique() {
        let host = HostAddresses::new([
            ip("fd77::1"),
            ip("10.77.0.1"),
            ip("::ffff:10.77.0.1"),
            ip("127.0.0.1"),
            ip("10.77.0.1"),
        ]);
        assert_eq!(
            host.iter().collect::<Vec<_>>(),
            [ip("10.77.0.1"), ip("127.0.0.1"), ip("fd77::1")]
        );
        assert_eq!(host.len(), 3);
        assert!(host.contains(ip("fd77::1")));
        assert!(!host.contains(ip("fd77::2")));
        assert!(HostAddresses::default().is_empty());
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
            "[::ffff:0:127.0.0.1]:3478",
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
    fn wildcard_listeners_are_own_sockets_on_every_host_address() {
        let allow = vec![net("10.77.0.0/16"), net("fd77::/16")];
        let mut policy = PeerPolicy::new(allow, Vec::new())
            .with_own_sockets(
                vec![
                    socket("0.0.0.0:3478"),
                    socket("[::]:3479"),
                    socket("127.0.0.1:9641"),
                ],
                Vec::new(),
            )
            .with_host_addresses(HostAddresses::new([ip("10.77.0.1"), ip("fd77::1")]));
        for own in [
            "10.77.0.1:3478",
            "[::ffff:10.77.0.1]:3478",
            "[::ffff:0:10.77.0.1]:3478",
            "[fd77::1]:3478",
            "[fd77::1]:3479",
            "10.77.0.1:3479",
        ] {
            assert!(!policy.permits_peer(socket(own)), "{own} permitted");
        }
        for peer in [
            "10.77.0.1:3480",
            "10.77.0.2:3478",
            "[fd77::2]:3479",
            "10.77.0.1:9641", // that listener is on 127.0.0.1 only
        ] {
            assert!(policy.permits_peer(socket(peer)), "{peer} refused");
        }
        // The host's addresses change: the new set replaces the old one.
        policy.set_host_addresses(HostAddresses::new([ip("10.77.0.2")]));
        assert!(!policy.permits_peer(socket("10.77.0.2:3478")));
        assert!(policy.permits_peer(socket("10.77.0.1:3478")));
        assert!(policy.permits_peer(socket("[fd77::1]:3479")));
        assert_eq!(policy.host_addresses().len(), 1);
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
