//! CreatePermission (RFC 8656 §9): permissions for peers' IP addresses, within the allocation's
//! limit, and the checks on a peer that ChannelBind shares.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::authenticate::Authenticated;
use super::families::Relayed;
use super::{AllocationId, ClientAction, Family, FiveTuple, RequestError, Server, canonical_addr};
use crate::stun::{Message, Method, TransactionId, attr};

impl Server {
    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Result<ClientAction, RequestError> {
        let (id, relayed) = self.relayed_allocation(tuple)?;
        let tid = msg.transaction_id();
        let mut peers = 0;
        for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
            let peer = attr::decode_xor_address(attribute.value, &tid)
                .map_err(|_| RequestError::BadRequest("Malformed XOR-PEER-ADDRESS"))?;
            self.check_peer(peer, relayed)?;
            peers += 1;
        }
        if peers == 0 {
            return Err(RequestError::BadRequest("Missing XOR-PEER-ADDRESS"));
        }
        self.check_permission_room(id, now, msg, &tid)?;
        if let Some(alloc) = self.allocation_mut(id) {
            for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
                if let Ok(peer) = attr::decode_xor_address(attribute.value, &tid) {
                    alloc.permit(canonical_addr(peer).ip(), now);
                }
            }
        }
        self.reschedule(id, now);
        self.sync_offloads(id, now);
        self.reply_success(out, Method::CREATE_PERMISSION, tid, &auth.signing)
    }

    /// 508 when the peers of a CreatePermission would take the allocation past its limit of
    /// permissions (refreshing a live one takes no room).
    fn check_permission_room(
        &self,
        id: AllocationId,
        now: Instant,
        msg: &Message<'_>,
        tid: &TransactionId,
    ) -> Result<(), RequestError> {
        let Some(alloc) = self.allocation(id) else {
            return Ok(());
        };
        let mut new_ips: [Option<IpAddr>; 16] = [None; 16];
        let mut new = 0usize;
        for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
            let Ok(peer) = attr::decode_xor_address(attribute.value, tid) else {
                continue;
            };
            let ip = canonical_addr(peer).ip();
            if alloc.permits(ip, now) || new_ips[..new.min(16)].contains(&Some(ip)) {
                continue;
            }
            if new < 16 {
                new_ips[new] = Some(ip);
            }
            new += 1;
        }
        let max = self.config.permissions_per_allocation as usize;
        if alloc.live_permissions(now) + new > max {
            return Err(RequestError::InsufficientCapacity);
        }
        Ok(())
    }

    /// The allocation of `tuple` and its relayed addresses; 437 when there is none.
    pub(super) fn relayed_allocation(
        &self,
        tuple: &FiveTuple,
    ) -> Result<(AllocationId, Relayed), RequestError> {
        let id = *self
            .by_tuple
            .get(tuple)
            .ok_or(RequestError::AllocationMismatch)?;
        let relayed = self
            .allocation(id)
            .and_then(|a| a.relayed_pair())
            .ok_or(RequestError::AllocationMismatch)?;
        Ok((id, relayed))
    }

    /// May the allocation relayed on `relayed` talk to `peer`? Policy first (403 whatever the
    /// family), then the family (443; a dual allocation has both), both on the canonical form
    /// of the address.
    pub(super) fn check_peer(
        &self,
        peer: SocketAddr,
        relayed: Relayed,
    ) -> Result<(), RequestError> {
        let canonical = canonical_addr(peer);
        let relayed = relayed.for_peer(&canonical);
        if !self.policy.permits_ip(canonical.ip()) {
            return Err(RequestError::Forbidden("Peer address not allowed"));
        }
        if self.policy.is_own_socket(canonical)
            || canonical == relayed
            || canonical == self.advertised(relayed)
        {
            return Err(RequestError::Forbidden("Peer is this server"));
        }
        // An IPv4-in-IPv6 form names an IPv4 peer, which an IPv4 relay reaches directly.
        if Family::of(&canonical) != Family::of(&relayed) {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        Ok(())
    }
}
