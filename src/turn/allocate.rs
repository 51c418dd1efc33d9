//! Allocate (RFC 8656 §7): the request, its quota and lease, and the answer once the relay
//! socket is open.

use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::CachedResponse;
use super::authenticate::Authenticated;
use super::credentials::{CredentialKind, Principal};
use super::families::{self, Dual, DualStep};
use super::reply::write_response;
use super::{
    Allocation, AllocationId, ByteRate, ClientAction, EndReason, Event, Family, FiveTuple,
    PortRequest, Quota, QuotaError, RelayOpenError, RequestError, ReservationToken, Server,
    Traffic,
};
use crate::stun::{self, Message, Method, attr};

impl Server {
    pub(super) fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) -> Result<ClientAction, RequestError> {
        if self.by_tuple.contains_key(tuple) {
            return Err(RequestError::AllocationMismatch);
        }
        if self.draining {
            return Err(match self.alternate(tuple.transport, tuple.server) {
                Some(alternate) => RequestError::TryAlternate(alternate),
                None => RequestError::Forbidden("Server is draining"),
            });
        }
        let transport = msg
            .get(attr::REQUESTED_TRANSPORT)
            .ok_or(RequestError::BadRequest("Missing REQUESTED-TRANSPORT"))?;
        let transport = attr::decode_requested_transport(transport)
            .map_err(|_| RequestError::BadRequest("Malformed REQUESTED-TRANSPORT"))?;
        let tcp = self.requested_tcp(tuple, msg, transport)?;
        let token = msg.get(attr::RESERVATION_TOKEN);
        let even_port = msg.get(attr::EVEN_PORT);
        let family_attr = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        let additional = families::additional_attribute(msg)?;
        // RFC 8656 §7.2 step 5.
        if token.is_some() && (even_port.is_some() || family_attr.is_some()) {
            return Err(RequestError::BadRequest(
                "RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY",
            ));
        }
        if token.is_some() && additional.is_some() {
            return Err(RequestError::BadRequest(
                "RESERVATION-TOKEN with ADDITIONAL-ADDRESS-FAMILY",
            ));
        }
        // Step 6.
        if family_attr.is_some() && additional.is_some() {
            return Err(RequestError::BadRequest(
                "REQUESTED-ADDRESS-FAMILY with ADDITIONAL-ADDRESS-FAMILY",
            ));
        }
        let family = match family_attr.map(attr::decode_address_family) {
            None => Family::V4,
            Some(Ok(0x01)) => Family::V4,
            Some(Ok(0x02)) => Family::V6,
            Some(Ok(_)) => return Err(RequestError::AddressFamilyNotSupported),
            Some(Err(_)) => {
                return Err(RequestError::BadRequest(
                    "Malformed REQUESTED-ADDRESS-FAMILY",
                ));
            }
        };
        let supported = match family {
            Family::V4 => self.config.relay_v4,
            Family::V6 => self.config.relay_v6,
        };
        if !supported {
            return Err(RequestError::AddressFamilyNotSupported);
        }
        let mut reservation = None;
        let port = match (token, even_port) {
            (Some(token), _) => {
                let token = attr::decode_reservation_token(token)
                    .map_err(|_| RequestError::BadRequest("Malformed RESERVATION-TOKEN"))?;
                PortRequest::Reserved(ReservationToken(token))
            }
            (None, Some(even)) => {
                let reserve = attr::decode_even_port(even)
                    .map_err(|_| RequestError::BadRequest("Malformed EVEN-PORT"))?;
                if reserve {
                    let token = self.new_token();
                    reservation = Some(token);
                    PortRequest::EvenReserveNext(token)
                } else {
                    PortRequest::Even
                }
            }
            (None, None) => PortRequest::Any,
        };
        // Steps 8 and 9: a dual allocation.
        let dual = match additional {
            Some(value) => families::dual_request(value, port, &self.config)?,
            None => Dual::default(),
        };
        let lifetime = self.lifetime(msg, false)?;
        let username = match &auth.hashed_username {
            Some(name) => name,
            None => msg
                .get(attr::USERNAME)
                .and_then(|v| attr::decode_text(v, attr::MAX_USERNAME_LEN).ok())
                .unwrap_or_default(),
        };
        let user = Principal::new(auth.kind, username);
        let rest_expiry = match auth.kind {
            CredentialKind::Rest => {
                super::credentials::parse_rest_username(username).map(|(e, _)| e)
            }
            CredentialKind::LongTerm => None,
        };
        let overrides = self.credentials.limits(&user);
        let quota = Quota {
            user_allocations: overrides
                .allocations
                .unwrap_or(self.config.quota.user_allocations),
            total_allocations: self
                .credentials
                .total_allocations()
                .unwrap_or(self.config.quota.total_allocations),
            user_bandwidth: overrides.bandwidth.or(self.config.quota.user_bandwidth),
        };
        let user_bandwidth = match self.node.ledger.acquire(&user, quota) {
            Ok(bandwidth) => bandwidth,
            // The node is full: another node may not be.
            Err(QuotaError::Total) => {
                return Err(match self.alternate(tuple.transport, tuple.server) {
                    Some(alternate) => RequestError::TryAlternate(alternate),
                    None => RequestError::AllocationQuotaReached,
                });
            }
            Err(QuotaError::User) => return Err(RequestError::AllocationQuotaReached),
        };
        let lease_limit = quota.user_allocations;
        let allocation_bandwidth = overrides
            .allocation_bandwidth
            .or(self.config.allocation_bandwidth);
        let id = self.insert_allocation(Allocation {
            id: AllocationId {
                index: 0,
                generation: 0,
            },
            tuple: *tuple,
            username: username.into(),
            principal: user.clone(),
            rest_expiry,
            signing: auth.signing,
            relayed: None,
            dual,
            created: now,
            expires: now + lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            traffic: Traffic::default(),
            wake: now + lifetime,
            last_response: CachedResponse {
                tid: Some(msg.transaction_id()),
                ..CachedResponse::default()
            },
            reservation,
            bandwidth: allocation_bandwidth.map(ByteRate::new),
            bandwidth_from_store: overrides.allocation_bandwidth.is_some(),
            user_bandwidth,
            pending_open: None,
            leased: false,
            offloaded: Vec::new(),
            tcp: tcp.then(Default::default),
        });
        if self.config.cluster_leases && lease_limit > 0 {
            if let Some(alloc) = self.allocation_mut(id) {
                alloc.pending_open = Some((family, port));
            }
            self.events.push_back(Event::AcquireLease {
                allocation: id,
                user,
                limit: lease_limit,
            });
        } else {
            let open = self.open_relay_event(id, family, port);
            self.events.push_back(open);
        }
        Ok(ClientAction::None)
    }

    fn new_token(&mut self) -> ReservationToken {
        self.token_counter += 1;
        let mac = stun::hmac_sha1(&self.token_key, &[&self.token_counter.to_be_bytes()]);
        let mut token = [0u8; 8];
        token.copy_from_slice(&mac[..8]);
        ReservationToken(token)
    }

    /// The cluster granted (or refused) the lease asked for by [`Event::AcquireLease`]. When
    /// granted the allocation goes on to [`Event::OpenRelay`]; when refused the Allocate is
    /// answered with 486, written to `out`, and where to send it is returned.
    pub fn handle_lease(
        &mut self,
        allocation: AllocationId,
        granted: bool,
        out: &mut [u8],
    ) -> Option<(FiveTuple, usize)> {
        let alloc = self.allocation_mut(allocation)?;
        let (family, port) = alloc.pending_open.take()?;
        if granted {
            alloc.leased = true;
            let open = self.open_relay_event(allocation, family, port);
            self.events.push_back(open);
            return None;
        }
        let tuple = alloc.tuple;
        let tid = alloc.last_response.tid?;
        let key = alloc.signing;
        self.remove_allocation(allocation, EndReason::Failed);
        self.events
            .retain(|e| *e != Event::CloseRelay { allocation });
        let n = self.write_error(
            out,
            Method::ALLOCATE,
            tid,
            RequestError::AllocationQuotaReached,
            Some(&key),
        );
        Some((tuple, n))
    }

    /// The I/O layer opened (or failed to open) the relay socket asked for by
    /// [`Event::OpenRelay`]. Returns the Allocate response, written to `out`, and where to send it.
    pub fn handle_relay_opened(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        result: Result<SocketAddr, RelayOpenError>,
        out: &mut [u8],
    ) -> Option<(FiveTuple, usize)> {
        let result = match self.dual_opened(allocation, result) {
            DualStep::Wait => return None,
            DualStep::Answer(result) => result,
        };
        let alloc = self.allocation_mut(allocation)?;
        let tuple = alloc.tuple;
        let tid = alloc.last_response.tid?;
        let key = alloc.signing;
        let relayed = match result {
            Ok(addr) => addr,
            Err(error) => {
                self.remove_allocation(allocation, EndReason::Failed);
                self.events
                    .retain(|e| *e != Event::CloseRelay { allocation });
                // Out of ports: another node may have some.
                let refusal = match (error, self.alternate(tuple.transport, tuple.server)) {
                    (RelayOpenError::NoPort, Some(alternate)) => {
                        RequestError::TryAlternate(alternate)
                    }
                    _ => RequestError::InsufficientCapacity,
                };
                let n = self.write_error(out, Method::ALLOCATE, tid, refusal, Some(&key));
                return Some((tuple, n));
            }
        };
        alloc.relayed = Some(relayed);
        let lifetime = alloc.expires.saturating_duration_since(now);
        let token = alloc.reservation;
        let (second, address_error) = (alloc.dual.relayed, alloc.dual.error);
        let advertised = self.advertised(relayed);
        let n = write_response(
            out,
            Method::ALLOCATE,
            tid,
            &self.config.software,
            &key,
            |w| {
                w.xor_address(attr::XOR_RELAYED_ADDRESS, advertised)?;
                // A dual allocation's IPv6 address, after the IPv4 one (RFC 8656 §7.2).
                if let Some(second) = second {
                    w.xor_address(attr::XOR_RELAYED_ADDRESS, second)?;
                }
                families::write_address_error(w, address_error)?;
                w.u32(attr::LIFETIME, lifetime.as_secs() as u32)?;
                if let Some(token) = token {
                    w.attribute(attr::RESERVATION_TOKEN, &token.0)?;
                }
                w.xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client)
            },
        )
        .unwrap_or(0);
        self.stats.allocations_created += 1;
        self.count_response(Method::ALLOCATE, 200);
        // The allocation was just looked up, so it is there.
        let alloc = self.allocation_mut(allocation)?;
        alloc.last_response.store(tid, now, &out[..n]);
        (n > 0).then_some((tuple, n))
    }
}
