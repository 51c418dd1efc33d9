//! Dual-stack allocations (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY): which Allocate requests
//! may ask for one, opening its second relay socket, and ADDRESS-ERROR-CODE when only one
//! family could be served.

use std::net::SocketAddr;

use super::{Allocation, AllocationId, CoreConfig, Event, Family, PortRequest, RequestError};
use super::{RelayOpenError, Server};
use crate::stun::{Message, MessageWriter, StunError, attr};

/// The IPv6 half of a dual allocation: still to open, open, or refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dual {
    /// The family whose relay socket is opened once the current one is (§7.2 step 9: IPv4
    /// first, then IPv6), and the port request it gets.
    pub pending: Option<(Family, PortRequest)>,
    /// The first relayed address while the second socket is opened: it becomes the
    /// allocation's `relayed` when the Allocate is answered, not before (until then the
    /// allocation counts as not yet granted).
    pub held: Option<SocketAddr>,
    /// The second relayed address (IPv6) once its socket is open.
    pub relayed: Option<SocketAddr>,
    /// The family that could not be served and why (440 or 508), for ADDRESS-ERROR-CODE.
    pub error: Option<(Family, RequestError)>,
}

/// The ADDITIONAL-ADDRESS-FAMILY attribute of a request, under the RFC's code point 0x8000 or
/// the draft's 0x8032 (coturn 4.6's `turnutils_uclient -Z` sends that one; both are
/// comprehension-optional, so a server that ignores either gives a single-family allocation,
/// which is legal). More than one of them, under either code point, is ambiguous: 400.
pub(super) fn additional_attribute<'a>(
    msg: &Message<'a>,
) -> Result<Option<&'a [u8]>, RequestError> {
    let mut found = msg.attributes().filter(|a| {
        a.typ == attr::ADDITIONAL_ADDRESS_FAMILY || a.typ == attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT
    });
    let first = found.next().map(|a| a.value);
    if found.next().is_some() {
        return Err(RequestError::BadRequest(
            "Repeated ADDITIONAL-ADDRESS-FAMILY",
        ));
    }
    Ok(first)
}

/// What an Allocate with ADDITIONAL-ADDRESS-FAMILY `value` gets (RFC 8656 §7.2 steps 8 and 9;
/// steps 5 and 6, RESERVATION-TOKEN or REQUESTED-ADDRESS-FAMILY with it, are checked before,
/// and so is step 7: the first family, IPv4, is supported). `port` is the IPv4 socket's port
/// request.
pub(super) fn dual_request(
    value: &[u8],
    port: PortRequest,
    config: &CoreConfig,
) -> Result<Dual, RequestError> {
    // Step 8: EVEN-PORT with R reserves the port after an even one; with two relayed
    // addresses that would be ambiguous.
    if matches!(port, PortRequest::EvenReserveNext(_)) {
        return Err(RequestError::BadRequest(
            "EVEN-PORT with R and ADDITIONAL-ADDRESS-FAMILY",
        ));
    }
    // Step 9: 0x02 (IPv6) is the only valid value; 0x01 is a Bad Request. Any other value
    // names a family this server does not know: 440, as REQUESTED-ADDRESS-FAMILY gets.
    let family = match attr::decode_address_family(value) {
        Ok(attr::FAMILY_IPV6) => Family::V6,
        Ok(attr::FAMILY_IPV4) => {
            return Err(RequestError::BadRequest(
                "ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6",
            ));
        }
        Ok(_) => return Err(RequestError::AddressFamilyNotSupported),
        Err(_) => {
            return Err(RequestError::BadRequest(
                "Malformed ADDITIONAL-ADDRESS-FAMILY",
            ));
        }
    };
    // Without an IPv6 relay address the request is met in part: the IPv4 allocation, and
    // ADDRESS-ERROR-CODE 440 for IPv6 in the success response.
    if !config.relay_v6 {
        return Ok(Dual {
            error: Some((family, RequestError::AddressFamilyNotSupported)),
            ..Dual::default()
        });
    }
    // EVEN-PORT without R asks for an even port: both relayed addresses get one.
    let port = match port {
        PortRequest::Even => PortRequest::Even,
        _ => PortRequest::Any,
    };
    Ok(Dual {
        pending: Some((family, port)),
        ..Dual::default()
    })
}

/// What [`Server::dual_opened`] makes of a relay socket's result.
pub(super) enum DualStep {
    /// Another relay socket of the allocation is being opened: no answer yet.
    Wait,
    /// Answer the Allocate with this: the first relayed address, or why there is none.
    Answer(Result<SocketAddr, RelayOpenError>),
}

impl Server {
    /// Takes the result of opening one of a dual allocation's relay sockets (any other
    /// allocation's passes through as it is). IPv4 opens first, then IPv6; if one of them
    /// fails the allocation goes on with the other, and the response says why in
    /// ADDRESS-ERROR-CODE (508: no port); only if both fail is the Allocate refused (§7.2
    /// step 9).
    pub(super) fn dual_opened(
        &mut self,
        allocation: AllocationId,
        result: Result<SocketAddr, RelayOpenError>,
    ) -> DualStep {
        let Some(alloc) = self.allocation_mut(allocation) else {
            return DualStep::Answer(result);
        };
        if let Some(first) = alloc.dual.held.take() {
            // The second (IPv6) socket's result; the first address is kept.
            match result {
                Ok(addr) => alloc.dual.relayed = Some(addr),
                Err(_) => {
                    let family = other(Family::of(&first));
                    alloc.dual.error = Some((family, RequestError::InsufficientCapacity));
                }
            }
            return DualStep::Answer(Ok(first));
        }
        let Some((family, port)) = alloc.dual.pending.take() else {
            return DualStep::Answer(result);
        };
        // The first (IPv4) socket's result. If it failed, the second is the allocation's only
        // one, answered as any single relay socket is.
        match result {
            Ok(addr) => alloc.dual.held = Some(addr),
            Err(_) => {
                alloc.dual.error = Some((other(family), RequestError::InsufficientCapacity));
            }
        }
        self.events.push_back(Event::OpenRelay {
            allocation,
            family,
            port,
        });
        DualStep::Wait
    }
}

/// The family a dual allocation has besides `family`.
fn other(family: Family) -> Family {
    match family {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    }
}

/// An allocation's relayed addresses, as the checks on a peer need them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Relayed {
    first: SocketAddr,
    second: Option<SocketAddr>,
}

impl Relayed {
    /// The one that reaches `peer`: on a dual allocation the one of the peer's family, else
    /// the only one (of another family than the peer's, maybe: 443 for the request).
    pub fn for_peer(self, peer: &SocketAddr) -> SocketAddr {
        match self.second {
            Some(second) if second.is_ipv4() == peer.is_ipv4() => second,
            _ => self.first,
        }
    }
}

impl Allocation {
    /// Its relayed addresses; `None` while the relay socket is being opened.
    pub(super) fn relayed_pair(&self) -> Option<Relayed> {
        self.relayed.map(|first| Relayed {
            first,
            second: self.dual.relayed,
        })
    }

    /// The relayed address that reaches `peer`: on a dual allocation the one of the peer's
    /// family, else the only one; `None` while the relay socket is being opened.
    pub fn relayed_for(&self, peer: &SocketAddr) -> Option<SocketAddr> {
        self.relayed_pair().map(|r| r.for_peer(peer))
    }

    /// Both relayed addresses of a dual allocation (IPv4 first); one otherwise; none while the
    /// relay socket is being opened.
    pub fn relayed_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.relayed.into_iter().chain(self.dual.relayed)
    }

    /// Whether `addr` is one of its relayed addresses. Per Send indication and peer datagram:
    /// inlined, as the other per-packet helpers of an allocation are.
    #[inline]
    pub(super) fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.relayed == Some(addr) || self.dual.relayed == Some(addr)
    }
}

/// Writes ADDRESS-ERROR-CODE for the family a dual allocation could not serve (RFC 8656
/// §18.13), if any.
pub(super) fn write_address_error(
    w: &mut MessageWriter<'_>,
    error: Option<(Family, RequestError)>,
) -> Result<(), StunError> {
    let Some((family, error)) = error else {
        return Ok(());
    };
    let family = match family {
        Family::V4 => attr::FAMILY_IPV4,
        Family::V6 => attr::FAMILY_IPV6,
    };
    w.address_error_code(family, error.code(), error.reason())
}
