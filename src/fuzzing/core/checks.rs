//! The invariants checked after every operation: each reply is a well-formed answer to its
//! request, relayed data arrives intact, and the core's state and counters add up.

use std::net::SocketAddr;
use std::ops::Range;

use crate::stun::{self, ChannelData, Class, Message, Method, TransactionId, attr};
use crate::turn::{AllocationId, RESPONSE_CODES, RESPONSE_METHODS, Stats, policy::canonical_ip};

use super::Harness;
use super::setup::{epoch, five_tuple};
use super::tcp::ConnState;

/// Largest answer to a request without valid credentials, besides the realm (reflection).
pub(super) const UNAUTHENTICATED_REPLY_MAX: usize = 200;

impl Harness {
    /// A reply to `request` from slot `t` is a well-formed answer to it.
    pub(super) fn check_reply(
        &mut self,
        t: usize,
        request: Option<(Method, Class, TransactionId)>,
        reply: &[u8],
    ) {
        let (method, class, tid) = request.expect("a reply to something that is no request");
        assert_eq!(class, Class::Request, "a reply to a {class:?}");
        let msg = Message::parse(reply).expect("the reply parses");
        assert_eq!(
            msg.transaction_id(),
            tid,
            "reply with another transaction id"
        );
        assert!(msg.has_fingerprint(), "reply without FINGERPRINT");
        assert!(
            matches!(msg.class(), Class::Success | Class::Error),
            "a reply of class {:?}",
            msg.class()
        );
        if msg.method() != method {
            assert_eq!(
                self.last_replies.get(&(t, tid.0)).map(Vec::as_slice),
                Some(reply),
                "reply for {:?} to {method:?}, and not a retransmitted answer",
                msg.method()
            );
        }
        if msg.class() == Class::Error {
            let code = msg
                .get(attr::ERROR_CODE)
                .map(attr::decode_error_code)
                .expect("an error reply has ERROR-CODE")
                .expect("ERROR-CODE decodes")
                .0;
            if matches!(code, 401 | 438) && !msg.has_integrity() {
                let realm = msg.get(attr::REALM).expect("a challenge has REALM");
                assert_eq!(realm, self.config.realm.as_bytes());
                let nonce = msg.get(attr::NONCE).expect("a challenge has NONCE");
                assert_eq!(nonce.len(), crate::turn::nonce::NONCE_LEN);
            }
        }
        if msg.has_integrity() {
            assert!(
                self.keys.iter().any(|key| msg.check_integrity(key).is_ok()),
                "reply signed with a key no request was signed with"
            );
        } else {
            let max = UNAUTHENTICATED_REPLY_MAX + self.config.realm.len();
            assert!(
                reply.len() <= max,
                "unsigned reply of {} bytes (at most {max})",
                reply.len()
            );
        }
        if msg.class() == Class::Success && msg.method() == Method::BINDING {
            let mapped = msg
                .get(attr::XOR_MAPPED_ADDRESS)
                .expect("XOR-MAPPED-ADDRESS");
            assert_eq!(
                attr::decode_xor_address(mapped, &tid),
                Ok(five_tuple(t).client)
            );
        }
        self.last_replies.insert((t, tid.0), reply.to_vec());
    }

    /// A relayed client message goes out of the right allocation to a permitted peer, and
    /// `payload` is its data.
    pub(super) fn check_relay(
        &self,
        t: usize,
        data: &[u8],
        allocation: AllocationId,
        peer: SocketAddr,
        payload: Range<usize>,
    ) {
        assert!(payload.start <= payload.end && payload.end <= data.len());
        let alloc = self
            .server
            .allocation(allocation)
            .expect("relay for an allocation that is gone");
        assert_eq!(
            alloc.tuple(),
            five_tuple(t),
            "relay through another's allocation"
        );
        let relayed = alloc
            .relayed()
            .expect("relay before the relay socket is open");
        assert_eq!(self.relays.get(&allocation), Some(&relayed));
        assert!(
            alloc.permits(canonical_ip(peer.ip()), self.now),
            "relay to {peer} without a permission"
        );
        assert!(
            self.policy.permits_peer(peer),
            "relay to {peer}, against the policy"
        );
        assert_ne!(peer, relayed, "relay to its own relayed address");
        let relayed_payload = &data[payload];
        if stun::channel::is_channel_data(data) {
            let frame = ChannelData::parse(data).expect("relayed ChannelData parses");
            assert_eq!(relayed_payload, frame.payload);
            let bound = alloc.channel(frame.number, self.now).map(|c| c.peer);
            assert_eq!(bound, Some(peer), "ChannelData to another peer than bound");
        } else {
            let msg = Message::parse(data).expect("a relayed Send indication parses");
            assert_eq!(
                (msg.method(), msg.class()),
                (Method::SEND, Class::Indication)
            );
            assert_eq!(msg.get(attr::DATA), Some(relayed_payload));
        }
    }

    /// What must hold after every operation.
    pub(super) fn check_state(&mut self) {
        let count = self.server.allocation_count();
        assert_eq!(self.server.allocations().count(), count);
        assert_eq!(
            self.node.ledger.total() as usize,
            count,
            "the ledger counts another number of allocations than the core holds"
        );
        let max_permissions = self
            .configs
            .iter()
            .map(|c| c.limits.permissions_per_allocation)
            .max()
            .unwrap_or(0) as usize;
        let max_channels = self
            .configs
            .iter()
            .map(|c| c.limits.channels_per_allocation)
            .max()
            .unwrap_or(0) as usize;
        let deadline = self.server.poll_timeout();
        if self.server.take_new_deadline() {
            self.timer = deadline;
        }
        if let Some(deadline) = deadline {
            assert!(
                self.timer.is_some_and(|timer| timer <= deadline),
                "the core must wake at {:?}, but the I/O layer was last told {:?}",
                deadline - epoch(),
                self.timer.map(|t| t - epoch())
            );
        }
        let mut relayed = 0;
        for a in self.server.allocations() {
            assert_eq!(
                self.server.allocation_of(&a.tuple()).map(|b| b.id()),
                Some(a.id())
            );
            assert!(
                a.live_permissions(self.now) <= max_permissions,
                "too many permissions"
            );
            assert!(a.channels().len() <= max_channels, "too many channels");
            let next = a.next_deadline(self.now);
            assert!(
                deadline.is_some_and(|d| d <= next),
                "allocation {} due at {:?}, but the core wakes at {:?}",
                a.id(),
                next - epoch(),
                deadline.map(|d| d - epoch())
            );
            relayed += usize::from(a.relayed().is_some());
        }
        if count == 0 {
            assert_eq!(deadline, None, "a deadline without allocations");
        }
        let stats = self.server.stats();
        for (now, before) in counters(&stats).into_iter().zip(counters(&self.stats)) {
            assert!(now >= before, "a counter went down: {:?}", stats);
        }
        self.check_tcp(&stats);
        let ended = stats.allocations_expired + stats.allocations_deleted;
        assert_eq!(
            stats.allocations_created.checked_sub(ended),
            Some(relayed as u64),
            "created {} - expired {} - deleted {} is not the {relayed} live allocations",
            stats.allocations_created,
            stats.allocations_expired,
            stats.allocations_deleted
        );
        self.stats = stats;
    }

    /// RFC 6062: every connection the core holds is one the harness saw made and not closed,
    /// of a live TCP allocation, to the peer it was made for, with its ConnectionBind deadline
    /// on the core's timer; connections closed are forgotten; the counters agree with what the
    /// harness saw answered, accepted, bound and expired.
    fn check_tcp(&self, stats: &Stats) {
        assert_eq!(
            self.server.tcp_connection_count(),
            self.tcp.connections.len(),
            "the core holds another number of peer connections than were made and not closed: {:?}",
            self.tcp.connections
        );
        let deadline = self.server.poll_timeout();
        for (id, c) in &self.tcp.connections {
            let alloc = self
                .server
                .allocation(c.allocation)
                .unwrap_or_else(|| panic!("connection {id} outlived its allocation"));
            assert!(alloc.is_tcp(), "connection {id} of a UDP allocation");
            assert_eq!(
                self.server.tcp_connection_peer(*id),
                Some(c.peer),
                "connection {id}'s peer"
            );
            if let ConnState::Pending { deadline: due } = c.state {
                assert!(
                    deadline.is_some_and(|d| d <= due),
                    "connection {id} due at {:?}, but the core wakes at {:?}",
                    due - epoch(),
                    deadline.map(|d| d - epoch())
                );
            }
        }
        for id in &self.tcp.gone {
            assert_eq!(
                self.server.tcp_connection_peer(*id),
                None,
                "closed connection {id} still known"
            );
        }
        let seen = &self.tcp.tally;
        let counted = (
            stats.tcp_connections_opened,
            stats.tcp_connections_failed,
            stats.tcp_connections_bound,
            stats.tcp_bind_timeouts,
        );
        assert_eq!(
            counted,
            (
                seen.connected + seen.accepted,
                seen.failed,
                seen.bound,
                seen.timeouts
            ),
            "TCP counters (opened, failed, bound, bind timeouts) against what was seen: {seen:?}"
        );
        let responses = |method: &str, code: u16| response_count(stats, method, code);
        assert_eq!(
            responses("connect", 200),
            seen.connected,
            "Connect successes counted"
        );
        assert_eq!(
            responses("connect", 447) + responses("connect", 508),
            seen.failed,
            "Connect failures counted"
        );
        assert_eq!(
            responses("connection_bind", 200),
            seen.bound,
            "ConnectionBind successes counted"
        );
    }

    /// At the end of an input: no lease held by an allocation that is gone.
    pub(crate) fn finish(&mut self) {
        for id in &self.leased {
            assert!(
                self.server.allocation(*id).is_some(),
                "lease of {id} never released"
            );
        }
    }
}

/// Every counter of `stats`, in a fixed order.
pub(super) fn counters(stats: &Stats) -> Vec<u64> {
    let mut all = vec![
        stats.binding_requests,
        stats.allocations_created,
        stats.allocations_expired,
        stats.allocations_deleted,
        stats.error_responses,
        stats.auth_failures,
        stats.stale_nonces,
        stats.malformed,
        stats.to_peer_packets,
        stats.to_peer_bytes,
        stats.to_client_packets,
        stats.to_client_bytes,
        stats.dropped_no_allocation,
        stats.dropped_no_permission,
        stats.dropped_policy,
        stats.dropped_bandwidth,
        stats.dropped_too_large,
        stats.rate_limited,
        stats.rate_limited_node,
        stats.quota_rejected,
        stats.capacity_rejected,
        stats.tcp_connections_opened,
        stats.tcp_connections_failed,
        stats.tcp_connections_bound,
        stats.tcp_bind_timeouts,
        stats.tcp_to_peer_bytes,
        stats.tcp_to_client_bytes,
    ];
    all.extend(stats.responses.iter().flatten());
    all
}

/// The response counter of `method` (a [`RESPONSE_METHODS`] name) and `code`.
fn response_count(stats: &Stats, method: &str, code: u16) -> u64 {
    let row = RESPONSE_METHODS.iter().position(|m| *m == method);
    let column = RESPONSE_CODES.iter().position(|c| *c == code);
    match (row, column) {
        (Some(row), Some(column)) => stats.responses[row][column],
        _ => panic!("no response counter for {method} {code}"),
    }
}
