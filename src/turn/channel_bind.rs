//! ChannelBind (RFC 8656 §11): a channel number bound to a peer, which also permits the peer.

use std::time::Instant;

use super::authenticate::Authenticated;
use super::{ClientAction, FiveTuple, RequestError, Server, canonical_addr};
use crate::stun::{self, Message, Method, attr};

impl Server {
    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Result<ClientAction, RequestError> {
        let (id, relayed) = self.relayed_allocation(tuple)?;
        // RFC 6062 relays a TCP allocation's data over its connections only: no channels.
        if self.allocation(id).is_some_and(|a| a.is_tcp()) {
            return Err(RequestError::BadRequest("ChannelBind on a TCP allocation"));
        }
        let tid = msg.transaction_id();
        let number = msg
            .get(attr::CHANNEL_NUMBER)
            .ok_or(RequestError::BadRequest("Missing CHANNEL-NUMBER"))?;
        let number = attr::decode_channel_number(number)
            .map_err(|_| RequestError::BadRequest("Malformed CHANNEL-NUMBER"))?;
        if !stun::channel::is_valid_channel_number(number) {
            return Err(RequestError::BadRequest("Channel number out of range"));
        }
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .ok_or(RequestError::BadRequest("Missing XOR-PEER-ADDRESS"))?;
        let peer = attr::decode_xor_address(peer, &tid)
            .map_err(|_| RequestError::BadRequest("Malformed XOR-PEER-ADDRESS"))?;
        self.check_peer(peer, relayed)?;
        let peer = canonical_addr(peer);
        let limits = (
            self.config.channels_per_allocation as usize,
            self.config.permissions_per_allocation as usize,
        );
        if let Some(alloc) = self.allocation(id) {
            let (max_channels, max_permissions) = limits;
            let new_channel = !alloc.channels.iter().any(|c| c.number == number);
            if new_channel && alloc.channels.len() >= max_channels {
                return Err(RequestError::InsufficientCapacity);
            }
            if !alloc.permits(peer.ip(), now) && alloc.live_permissions(now) >= max_permissions {
                return Err(RequestError::InsufficientCapacity);
            }
        }
        if let Some(alloc) = self.allocation_mut(id) {
            alloc
                .bind_channel(number, peer, now)
                .map_err(RequestError::BadRequest)?;
            alloc.permit(peer.ip(), now);
        }
        self.reschedule(id, now);
        self.sync_offloads(id, now);
        self.reply_success(out, Method::CHANNEL_BIND, tid, &auth.signing)
    }
}
