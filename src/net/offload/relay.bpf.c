// SPDX-License-Identifier: MIT OR GPL-2.0-only
//
// This file alone is under MIT or GPL-2.0 (the rest of turnpike is Apache-2.0): the kernel lets
// only programs that declare a GPL-compatible license call bpf_check_mtu.
//
// turnpike's kernel fast path: a TC ingress program (attached through a TCX link held by the
// turnpike process) that relays UDP ChannelData and the matching peer datagrams without waking
// user space. It is a cache of decisions the protocol core already made: user space writes an
// entry in `channels` and `peers` when a channel with a permitted peer is bound, and deletes it
// when anything ends it. Anything the program does not know, or cannot check, goes up to the
// normal path untouched (see PASS below).
//
// Where a rewritten datagram goes was decided by user space from the kernel's routing table when
// it wrote the entry (rtnetlink, as `ip route get`): to this host, it goes up the stack (from lo
// only); to another host, it is redirected out of the interface the route names, and the kernel
// finds the next hop and its MAC address (bpf_redirect_neigh). bpf_fib_lookup would decide per
// datagram, but it answers only on interfaces with IP forwarding on, which a TURN server has no
// reason to turn on. Checksums: the UDP checksum the sender wrote is
// updated for the new headers (never recomputed from the payload, so a wrong one stays wrong and
// the receiver drops the datagram as it would have dropped the original); a datagram that
// carries none gets none (legal over IPv4). A datagram from a sender on this host whose
// checksum is still to be filled in (checksum offload, CHECKSUM_PARTIAL) is carried only to a
// local socket: leaving the host, the device would fill it in at the old header's offset.
//
// IPv4 over an Ethernet-framed device (lo, veth, Ethernet) only in this version. Rebuild the
// object with scripts/build-bpf.sh; the committed relay.bpf.o is checked against this source by
// a test.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Slots of per-allocation counters; src/net/offload/mod.rs has the same number.
#define SLOTS 65536

#define ETH_LEN 14
#define IP_OFF ETH_LEN
#define UDP_OFF (ETH_LEN + 20)
#define PAYLOAD_OFF (UDP_OFF + 8)

// Verdicts. Everything not relayed goes on untouched as TC_ACT_UNSPEC, which under TCX means
// "next program": another turnpike on the same interface (tests run several at once) sees
// its own datagrams, and the stack gets them when no program takes them. A relayed datagram
// ends the chain with TC_ACT_OK and goes up the stack to its new destination.
#define PASS TC_ACT_UNSPEC
#define RELAYED TC_ACT_OK

// What to_peer returns for a datagram that is not ChannelData it knows (untouched).
#define NOT_MINE -2

// The loopback interface's index, in every network namespace.
#define LOOPBACK_IFINDEX 1

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// All addresses and ports are in network byte order, as on the wire.

// A client's ChannelData on a listener: (client, listener, channel).
struct channel_key {
	__u32 client_ip;
	__u32 listener_ip;
	__u16 client_port;
	__u16 listener_port;
	__u16 channel;
	__u16 pad;
};

// Where that ChannelData goes: from the allocation's relayed address to the peer.
struct channel_entry {
	__u32 relay_ip;
	__u32 peer_ip;
	__u16 relay_port;
	__u16 peer_port;
	__u32 slot;
	__u16 max_payload;
	__u16 pad;
	// The interface the route to the peer leaves by; 0 when the peer is on this host.
	__u32 ifindex;
};

// A peer's datagram to a relayed address: (peer, relay).
struct peer_key {
	__u32 peer_ip;
	__u32 relay_ip;
	__u16 peer_port;
	__u16 relay_port;
};

// Where it goes: to the client as ChannelData from the listener.
struct peer_entry {
	__u32 client_ip;
	__u32 listener_ip;
	__u16 client_port;
	__u16 listener_port;
	__u16 channel;
	__u16 max_payload;
	__u32 slot;
	// The interface the route to the client leaves by; 0 when the client is on this host.
	__u32 ifindex;
};

// Per allocation slot, per CPU. Bytes are payload bytes (what the application sent).
struct slot_counters {
	__u64 to_peer_packets;
	__u64 to_peer_bytes;
	__u64 to_client_packets;
	__u64 to_client_bytes;
};

// Indexes of `totals`.
#define TOTAL_CARRIED 0
#define TOTAL_FAILED 1
// Known datagrams left to user space: checksum still to be filled in, and leaving the host.
#define TOTAL_PARTIAL 2
// Known datagrams left to user space: too big for the outgoing interface's MTU (user space
// sends them, and the stack fragments them).
#define TOTAL_TOO_BIG 3
// Known datagrams left to user space: for a socket on this host, arrived on another interface
// than lo.
#define TOTAL_LOCAL 4
#define TOTALS 5

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	// Entries are made by user space at ChannelBind, never by the program: allocated then,
	// not all at load (preallocated, the two tables took 54 MB of kernel memory per process).
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct channel_key);
	__type(value, struct channel_entry);
} channels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	// Entries are made by user space at ChannelBind, never by the program: allocated then,
	// not all at load (preallocated, the two tables took 54 MB of kernel memory per process).
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, struct peer_entry);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct slot_counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TOTALS);
	__type(key, __u32);
	__type(value, __u64);
} totals SEC(".maps");

static __always_inline void count_total(__u32 index)
{
	__u64 *total = bpf_map_lookup_elem(&totals, &index);
	if (total)
		*total += 1;
}

static __always_inline __u16 ip_checksum(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += word[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

// The last step of a rewrite: the IP header's addresses and length, with its checksum
// recomputed (the kernel checks it on the way up), the bytes past `tot_len` cut when `trim`
// (the old ChannelData padding), and the old flow hash forgotten. The datagram is the relay's
// own now: TTL 64, as user space sends; TOS and ID stay as they came. -1 when a helper failed.
static __always_inline int store_ip(struct __sk_buff *skb, struct iphdr *ip, __u32 saddr,
				    __u32 daddr, __u16 tot_len, int trim)
{
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->tot_len = bpf_htons(tot_len);
	ip->ttl = 64;
	ip->check = 0;
	ip->check = ip_checksum(ip);
	if (bpf_skb_store_bytes(skb, IP_OFF, ip, sizeof(*ip), BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (trim && bpf_skb_change_tail(skb, ETH_LEN + tot_len, 0) < 0)
		return -1;
	bpf_set_hash_invalid(skb);
	return 0;
}

// One's-complement arithmetic on 16-bit words as they lie in memory (the sum is the same in
// either byte order as long as every word is taken the same way).
static __always_inline __u32 plus(__u32 sum, __u16 word)
{
	return sum + word;
}

static __always_inline __u32 minus(__u32 sum, __u16 word)
{
	return sum + (__u16)~word;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

// The UDP pseudo-header's sum: addresses, protocol and UDP length (network order).
static __always_inline __u16 pseudo(__u32 saddr, __u32 daddr, __u16 udp_len)
{
	__u32 sum = (saddr & 0xffff) + (saddr >> 16) + (daddr & 0xffff) + (daddr >> 16);
	sum += bpf_htons(IPPROTO_UDP) + udp_len;
	return fold(sum);
}

// How the sender's UDP checksum is carried over.
enum checksum {
	// None was sent (0): none is sent.
	CSUM_NONE,
	// A full checksum: updated for the new headers.
	CSUM_FULL,
	// Only the pseudo-header's sum, the rest to be filled in by the device (a sender on this
	// host with checksum offload): sent as none, to a local socket only.
	CSUM_PARTIAL,
};

static __always_inline enum checksum checksum_kind(const struct iphdr *ip,
						   const struct udphdr *udp)
{
	if (udp->check == 0)
		return CSUM_NONE;
	// A partial checksum is exactly the pseudo-header's sum. A full one equals it only when
	// the rest sums to zero, one datagram in 65,535: that one goes up to user space too.
	if (udp->check == pseudo(ip->saddr, ip->daddr, udp->len))
		return CSUM_PARTIAL;
	return CSUM_FULL;
}

// The finished checksum from a running sum (0 is sent as 0xffff: 0 means "none").
static __always_inline __u16 finish(__u32 sum)
{
	__u16 check = (__u16)~fold(sum);
	return check ? check : 0xffff;
}

// The running sum of a datagram's checksum without its pseudo-header, ports and length (to be
// replaced by the new datagram's).
static __always_inline __u32 without_headers(const struct iphdr *ip, const struct udphdr *udp)
{
	__u32 sum = (__u16)~udp->check;
	sum = minus(sum, pseudo(ip->saddr, ip->daddr, udp->len));
	sum = minus(sum, udp->source);
	sum = minus(sum, udp->dest);
	return minus(sum, udp->len);
}

// `sum` with the new datagram's pseudo-header, ports and length (network order).
static __always_inline __u32 with_headers(__u32 sum, __u32 saddr, __u32 daddr, __u16 sport,
					  __u16 dport, __u16 udp_len)
{
	sum = plus(sum, pseudo(saddr, daddr, udp_len));
	sum = plus(sum, sport);
	sum = plus(sum, dport);
	return plus(sum, udp_len);
}

// A relayed datagram that failed half-way through its rewrite is neither the packet that
// came nor the one that should go: it is dropped and counted (never seen in practice: the
// helpers fail only when the kernel is out of memory).
static __always_inline int failed(void)
{
	count_total(TOTAL_FAILED);
	return TC_ACT_SHOT;
}

// Whether a datagram the program knows can be carried, as an IP packet of `tot_len` bytes;
// counts why not. Checked before anything is rewritten, so a datagram that cannot goes up
// untouched. (User space capped the payload at the route's MTU when it wrote the entry; the
// interface's MTU is checked here too, as it may have changed since.)
static __always_inline int carried(struct __sk_buff *skb, __u32 ifindex, enum checksum kind,
				   __u32 tot_len)
{
	if (ifindex == 0) {
		// To a socket on this host: only from lo, where the datagram keeps the route it
		// came with (local delivery). Arrived on another interface it would need an
		// input route, and the stack refuses one for a datagram from its own address.
		if (skb->ingress_ifindex == LOOPBACK_IFINDEX)
			return 1;
		count_total(TOTAL_LOCAL);
		return 0;
	}
	if (kind == CSUM_PARTIAL) {
		count_total(TOTAL_PARTIAL);
		return 0;
	}
	__u32 mtu_len = tot_len;
	if (bpf_check_mtu(skb, ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS) {
		count_total(TOTAL_TOO_BIG);
		return 0;
	}
	return 1;
}

// Counts `length` payload bytes relayed towards the peer (`to_peer`) or the client in the
// allocation's slot.
static __always_inline void count_slot(__u32 slot, int to_peer, __u16 length)
{
	struct slot_counters *counted = bpf_map_lookup_elem(&counters, &slot);
	if (!counted)
		return;
	if (to_peer) {
		counted->to_peer_packets += 1;
		counted->to_peer_bytes += length;
	} else {
		counted->to_client_packets += 1;
		counted->to_client_bytes += length;
	}
}

// Counts a relayed datagram and sends it on: to this host (`ifindex` 0; it came in on lo, see
// `carried`) up the stack; to another host out of `ifindex`, the kernel resolving the next hop.
static __always_inline int relayed(struct __sk_buff *skb, __u32 ifindex)
{
	count_total(TOTAL_CARRIED);
	if (ifindex == 0)
		return RELAYED;
	return bpf_redirect_neigh(ifindex, 0, 0, 0);
}

// Takes the padding after a ChannelData payload of `length` bytes (`available - length` bytes,
// at most 3) out of a running checksum: the new datagram does not carry it. -1 when it cannot
// be read.
static __always_inline int padding_out(struct __sk_buff *skb, __u16 length, __u16 available,
				       __u32 *sum)
{
	__u16 padding = available - length;
	if (!padding)
		return 0;
	__u8 pad[3] = {};
	__u32 at = PAYLOAD_OFF + 4 + length;
	int loaded = -1;
	if (padding == 1)
		loaded = bpf_skb_load_bytes(skb, at, pad, 1);
	else if (padding == 2)
		loaded = bpf_skb_load_bytes(skb, at, pad, 2);
	else
		loaded = bpf_skb_load_bytes(skb, at, pad, 3);
	if (loaded < 0)
		return -1;
	// The padding's words as they lie: after an odd payload its first byte is the low half of
	// the payload's last word.
	__u8 words[4] = {};
	if (length & 1) {
		words[1] = pad[0];
		words[2] = pad[1];
		words[3] = pad[2];
	} else {
		words[0] = pad[0];
		words[1] = pad[1];
		words[2] = pad[2];
	}
	*sum = minus(*sum, *(__u16 *)&words[0]);
	*sum = minus(*sum, *(__u16 *)&words[2]);
	return 0;
}

// Client A -> listener, on a channel whose peer is client B's relayed address on this host, and
// B has a channel bound back to A's relayed address (two clients relayed to each other by this
// server, as two browsers that both use it): both legs in one rewrite, ChannelData to
// ChannelData, from the listener B talks to. The layout stays (only the padding goes), so
// nothing moves: the UDP ports, the channel number and the addresses change.
static __always_inline int across(struct __sk_buff *skb, struct iphdr *ip, struct udphdr *udp,
				  const __u8 *head, __u16 length, __u16 available, __u32 slot,
				  const struct peer_entry *other)
{
	if (length > other->max_payload)
		return PASS;
	__u32 client_ip = other->client_ip, listener_ip = other->listener_ip;
	__u32 other_slot = other->slot, ifindex = other->ifindex;
	__u16 client_port = other->client_port, listener_port = other->listener_port;
	__u16 channel = other->channel;
	__u16 new_udp_len = bpf_htons(8 + 4 + length);

	enum checksum kind = checksum_kind(ip, udp);
	if (!carried(skb, ifindex, kind, 20 + 8 + 4 + length))
		return PASS;

	__u16 check = 0;
	if (kind == CSUM_FULL) {
		// Out: the old pseudo-header, ports, length, channel number and padding. In: the
		// new ones. The ChannelData length stays.
		__u32 sum = without_headers(ip, udp);
		sum = minus(sum, *(__u16 *)&head[0]);
		if (padding_out(skb, length, available, &sum) < 0)
			return PASS;
		sum = with_headers(sum, listener_ip, client_ip, listener_port, client_port,
				   new_udp_len);
		sum = plus(sum, channel);
		check = finish(sum);
	}

	struct {
		struct udphdr udp;
		__u16 channel;
	} out = {
		.udp = {
			.source = listener_port,
			.dest = client_port,
			.len = new_udp_len,
			.check = check,
		},
		.channel = channel,
	};
	if (bpf_skb_store_bytes(skb, UDP_OFF, &out, sizeof(out), BPF_F_RECOMPUTE_CSUM) < 0)
		return failed();
	if (store_ip(skb, ip, listener_ip, client_ip, 20 + 8 + 4 + length, available != length) < 0)
		return failed();

	count_slot(slot, 1, length);
	count_slot(other_slot, 0, length);
	// Two relayed datagrams, as user space would count them.
	count_total(TOTAL_CARRIED);
	return relayed(skb, ifindex);
}

// Client -> listener: ChannelData becomes a UDP datagram from the relay to the peer.
static __always_inline int to_peer(struct __sk_buff *skb, struct iphdr *ip, struct udphdr *udp,
				   __u16 udp_len)
{
	__u8 head[4];
	if (udp_len < 8 + 4)
		return NOT_MINE;
	if (bpf_skb_load_bytes(skb, PAYLOAD_OFF, head, sizeof(head)) < 0)
		return NOT_MINE;
	// Channel numbers 0x4000..0x7FFF (the first two bits 01): what the core binds (RFC 8656
	// narrowed the range to 0x4FFF; RFC 5766 clients such as coturn's still use the rest).
	if ((head[0] & 0xc0) != 0x40)
		return NOT_MINE;

	struct channel_key key = {
		.client_ip = ip->saddr,
		.listener_ip = ip->daddr,
		.client_port = udp->source,
		.listener_port = udp->dest,
		.channel = (__u16)head[0] | ((__u16)head[1] << 8),
		.pad = 0,
	};
	struct channel_entry *entry = bpf_map_lookup_elem(&channels, &key);
	if (!entry)
		return NOT_MINE;

	__u16 length = ((__u16)head[2] << 8) | head[3];
	__u16 available = udp_len - 8 - 4;
	// Empty ChannelData, a length past the datagram, more than 3 bytes of padding after it,
	// or more than the allocation may send: user space decides.
	if (length == 0 || length > available || available - length > 3 ||
	    length > entry->max_payload)
		return PASS;

	__u32 relay_ip = entry->relay_ip, peer_ip = entry->peer_ip, slot = entry->slot;
	__u16 relay_port = entry->relay_port, peer_port = entry->peer_port;
	__u32 ifindex = entry->ifindex;
	__u16 new_udp_len = bpf_htons(8 + length);

	if (ifindex == 0) {
		// The peer is on this host: is it another allocation's relayed address with a
		// channel bound back to this one?
		struct peer_key back = {
			.peer_ip = relay_ip,
			.relay_ip = peer_ip,
			.peer_port = relay_port,
			.relay_port = peer_port,
		};
		struct peer_entry *other = bpf_map_lookup_elem(&peers, &back);
		if (other)
			return across(skb, ip, udp, head, length, available, slot, other);
	}

	enum checksum kind = checksum_kind(ip, udp);
	if (!carried(skb, ifindex, kind, 20 + 8 + length))
		return PASS;

	__u16 check = 0;
	if (kind == CSUM_FULL) {
		// Out: the old pseudo-header, ports and length, the ChannelData header and the
		// padding after the payload. In: the new pseudo-header, ports and length.
		__u32 sum = without_headers(ip, udp);
		sum = minus(sum, *(__u16 *)&head[0]);
		sum = minus(sum, *(__u16 *)&head[2]);
		if (padding_out(skb, length, available, &sum) < 0)
			return PASS;
		sum = with_headers(sum, relay_ip, peer_ip, relay_port, peer_port, new_udp_len);
		check = finish(sum);
	}

	// Remove the 4 bytes right after the IP header (the old UDP ports); what follows is the
	// old UDP length and checksum and the ChannelData header, which the new UDP header covers.
	if (bpf_skb_adjust_room(skb, -4, BPF_ADJ_ROOM_NET, 0) < 0)
		return PASS;
	struct udphdr out = {
		.source = relay_port,
		.dest = peer_port,
		.len = new_udp_len,
		.check = check,
	};
	if (bpf_skb_store_bytes(skb, UDP_OFF, &out, sizeof(out), BPF_F_RECOMPUTE_CSUM) < 0)
		return failed();
	if (store_ip(skb, ip, relay_ip, peer_ip, 20 + 8 + length, available != length) < 0)
		return failed();

	count_slot(slot, 1, length);
	return relayed(skb, ifindex);
}

// Peer -> relay: a UDP datagram becomes ChannelData from the listener to the client.
static __always_inline int to_client(struct __sk_buff *skb, struct iphdr *ip, struct udphdr *udp,
				     __u16 udp_len)
{
	struct peer_key key = {
		.peer_ip = ip->saddr,
		.relay_ip = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct peer_entry *entry = bpf_map_lookup_elem(&peers, &key);
	if (!entry)
		return PASS;

	__u16 length = udp_len - 8;
	// Empty datagrams, and any that would not fit an IPv4 packet with 4 more bytes, go up.
	if (length == 0 || length > entry->max_payload || length > 0xffff - 20 - 8 - 4)
		return PASS;

	__u32 client_ip = entry->client_ip, listener_ip = entry->listener_ip, slot = entry->slot;
	__u16 client_port = entry->client_port, listener_port = entry->listener_port;
	__u16 channel = entry->channel;
	__u32 ifindex = entry->ifindex;
	__u16 new_udp_len = bpf_htons(8 + 4 + length);

	enum checksum kind = checksum_kind(ip, udp);
	if (!carried(skb, ifindex, kind, 20 + 8 + 4 + length))
		return PASS;

	__u16 check = 0;
	if (kind == CSUM_FULL) {
		// Out: the old pseudo-header, ports and length. In: the new ones and the
		// ChannelData header.
		__u32 sum = without_headers(ip, udp);
		sum = with_headers(sum, listener_ip, client_ip, listener_port, client_port,
				   new_udp_len);
		sum = plus(sum, channel);
		sum = plus(sum, bpf_htons(length));
		check = finish(sum);
	}

	// Insert 4 bytes right after the IP header, then write the UDP header and the ChannelData
	// header over the 12 bytes in front of the payload.
	if (bpf_skb_adjust_room(skb, 4, BPF_ADJ_ROOM_NET, 0) < 0)
		return PASS;
	struct {
		struct udphdr udp;
		__u16 channel;
		__u16 length;
	} out = {
		.udp = {
			.source = listener_port,
			.dest = client_port,
			.len = new_udp_len,
			.check = check,
		},
		.channel = channel,
		.length = bpf_htons(length),
	};
	if (bpf_skb_store_bytes(skb, UDP_OFF, &out, sizeof(out), BPF_F_RECOMPUTE_CSUM) < 0)
		return failed();
	if (store_ip(skb, ip, listener_ip, client_ip, 20 + 8 + 4 + length, 0) < 0)
		return failed();

	count_slot(slot, 0, length);
	return relayed(skb, ifindex);
}

SEC("classifier")
int turnpike_relay(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PASS;
	// A GSO super-packet carries many datagrams: user space splits it.
	if (skb->gso_segs > 1)
		return PASS;

	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return PASS;
	// No IP options, no fragments, UDP only.
	if (ip.version != 4 || ip.ihl != 5 || ip.protocol != IPPROTO_UDP)
		return PASS;
	if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return PASS;
	// The header is rewritten with a fresh checksum: a bad one must not be laundered.
	if (ip_checksum(&ip) != 0)
		return PASS;

	__u16 tot_len = bpf_ntohs(ip.tot_len);
	if (tot_len < 20 + 8 || (__u32)tot_len + ETH_LEN > skb->len)
		return PASS;

	struct udphdr udp;
	if (bpf_skb_load_bytes(skb, UDP_OFF, &udp, sizeof(udp)) < 0)
		return PASS;
	__u16 udp_len = bpf_ntohs(udp.len);
	// The UDP length must be the IP payload exactly.
	if (udp_len != tot_len - 20)
		return PASS;

	int verdict = to_peer(skb, &ip, &udp, udp_len);
	if (verdict != NOT_MINE)
		return verdict;
	return to_client(skb, &ip, &udp, udp_len);
}

// "Dual MIT/GPL" is the kernel's name for MIT OR GPL-2.0 (see the top of the file).
char LICENSE[] SEC("license") = "Dual MIT/GPL";
