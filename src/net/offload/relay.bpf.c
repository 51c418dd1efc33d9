// SPDX-License-Identifier: Apache-2.0
//
// turnpike's kernel fast path: a TC ingress program (attached through a TCX link held by the
// turnpike process) that relays UDP ChannelData and the matching peer datagrams without waking
// user space. It is a cache of decisions the protocol core already made: user space writes an
// entry in `channels` and `peers` when a channel with a permitted peer is bound, and deletes it
// when anything ends it. Anything the program does not know, or cannot check, goes up to the
// normal path untouched (see PASS below).
//
// IPv4 over an Ethernet-framed device (lo, veth) only in this version. Rebuild the object with
// scripts/build-bpf.sh; the committed relay.bpf.o is checked against this source by a test.

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
	__uint(max_entries, 2);
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

// Rewrites the IP header's addresses and length, with its checksum recomputed (the kernel
// checks it on the way up). TTL, TOS and ID stay as they came.
static __always_inline int store_ip(struct __sk_buff *skb, struct iphdr *ip, __u32 saddr,
				    __u32 daddr, __u16 tot_len)
{
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->tot_len = bpf_htons(tot_len);
	ip->check = 0;
	ip->check = ip_checksum(ip);
	return bpf_skb_store_bytes(skb, IP_OFF, ip, sizeof(*ip), BPF_F_RECOMPUTE_CSUM);
}

// A relayed datagram that failed half-way through its rewrite is neither the packet that
// came nor the one that should go: it is dropped and counted (never seen in practice: the
// helpers fail only when the kernel is out of memory).
static __always_inline int failed(void)
{
	count_total(TOTAL_FAILED);
	return TC_ACT_SHOT;
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

	// Remove the 4 bytes right after the IP header (the old UDP ports); what follows is the
	// old UDP length and checksum and the ChannelData header, which the new UDP header covers.
	if (bpf_skb_adjust_room(skb, -4, BPF_ADJ_ROOM_NET, 0) < 0)
		return PASS;
	struct udphdr out = {
		.source = relay_port,
		.dest = peer_port,
		.len = bpf_htons(8 + length),
		.check = 0, // no checksum: legal for UDP over IPv4 (RFC 768)
	};
	if (bpf_skb_store_bytes(skb, UDP_OFF, &out, sizeof(out), BPF_F_RECOMPUTE_CSUM) < 0)
		return failed();
	if (store_ip(skb, ip, relay_ip, peer_ip, 20 + 8 + length) < 0)
		return failed();
	if (available != length &&
	    bpf_skb_change_tail(skb, ETH_LEN + 20 + 8 + length, 0) < 0)
		return failed();
	bpf_set_hash_invalid(skb);

	struct slot_counters *counted = bpf_map_lookup_elem(&counters, &slot);
	if (counted) {
		counted->to_peer_packets += 1;
		counted->to_peer_bytes += length;
	}
	count_total(TOTAL_CARRIED);
	return RELAYED;
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
			.len = bpf_htons(8 + 4 + length),
			.check = 0,
		},
		.channel = channel,
		.length = bpf_htons(length),
	};
	if (bpf_skb_store_bytes(skb, UDP_OFF, &out, sizeof(out), BPF_F_RECOMPUTE_CSUM) < 0)
		return failed();
	if (store_ip(skb, ip, listener_ip, client_ip, 20 + 8 + 4 + length) < 0)
		return failed();
	bpf_set_hash_invalid(skb);

	struct slot_counters *counted = bpf_map_lookup_elem(&counters, &slot);
	if (counted) {
		counted->to_client_packets += 1;
		counted->to_client_bytes += length;
	}
	count_total(TOTAL_CARRIED);
	return RELAYED;
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

char LICENSE[] SEC("license") = "Apache-2.0";
