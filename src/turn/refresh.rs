//! Refresh (RFC 8656 §8): a new lifetime for the allocation, or its end with LIFETIME 0.

use std::time::{Duration, Instant};

use super::authenticate::Authenticated;
use super::reply::write_response;
use super::{ClientAction, EndReason, Family, FiveTuple, RequestError, Server};
use crate::stun::{Message, Method, attr};

impl Server {
    pub(super) fn refresh(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Result<ClientAction, RequestError> {
        let id = *self
            .by_tuple
            .get(tuple)
            .ok_or(RequestError::AllocationMismatch)?;
        let lifetime = self.lifetime(msg, true)?;
        if let Some(family) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let requested = match attr::decode_address_family(family) {
                Ok(0x01) => Family::V4,
                Ok(0x02) => Family::V6,
                _ => return Err(RequestError::PeerAddressFamilyMismatch),
            };
            // RFC 8656 §8.2: 443 when the family is not the allocation's. A dual allocation has
            // both; its two relayed addresses share one lifetime, so a Refresh naming either
            // family refreshes (or, with LIFETIME 0, deletes) the allocation whole.
            let has = self.allocation(id).is_some_and(|a| {
                a.relayed_addresses()
                    .any(|relayed| Family::of(&relayed) == requested)
            });
            if !has {
                return Err(RequestError::PeerAddressFamilyMismatch);
            }
        }
        if lifetime.is_zero() {
            self.remove_allocation(id, EndReason::Deleted);
        } else if let Some(alloc) = self.allocation_mut(id) {
            alloc.expires = now + lifetime;
            self.reschedule(id, now);
        }
        let n = write_response(
            out,
            Method::REFRESH,
            msg.transaction_id(),
            &self.config.software,
            &auth.signing,
            |w| w.u32(attr::LIFETIME, lifetime.as_secs() as u32),
        )
        .map_err(|_| RequestError::ServerError)?;
        self.count_response(Method::REFRESH, 200);
        Ok(ClientAction::Reply(n))
    }

    /// The lifetime a request asks for, clamped (RFC 8656 §7.2): at least the default, at most
    /// the maximum; zero only for a Refresh that deletes.
    pub(super) fn lifetime(
        &self,
        msg: &Message<'_>,
        refresh: bool,
    ) -> Result<Duration, RequestError> {
        let requested = match msg.get(attr::LIFETIME) {
            Some(v) => Some(
                attr::decode_u32(v).map_err(|_| RequestError::BadRequest("Malformed LIFETIME"))?,
            ),
            None => None,
        };
        Ok(match requested {
            Some(0) if refresh => Duration::ZERO,
            Some(secs) => Duration::from_secs(secs.into())
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime),
            None => self.config.default_lifetime,
        })
    }
}
