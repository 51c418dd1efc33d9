//! The core's events handled as the I/O layer handles them: relay sockets opened on fake
//! addresses (ports reserved and released), closed, and the kernel fast path's table kept.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::config::{PortRange, Transport};
use crate::stun::{Class, Message, Method, attr};
use crate::turn::{AllocationId, Event, Family, PortRequest, RelayOpenError};

use super::Harness;
use super::setup::tuple_of;

impl Harness {
    /// Does what the I/O layer does with each event, checking that it makes sense.
    pub(super) fn drain_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::OpenRelay {
                    allocation,
                    family,
                    port,
                } => self.open_relay(allocation, family, port),
                Event::OpenTcpRelay { allocation, family } => {
                    self.open_relay(allocation, family, PortRequest::Any)
                }
                // Answered later, by `Op::ConnectResult`.
                Event::Connect {
                    allocation,
                    connection,
                    peer,
                } => self.connect_event(allocation, connection, peer),
                Event::CloseConnection {
                    allocation,
                    connection,
                } => self.connection_expired(allocation, connection),
                Event::AcquireLease {
                    allocation, limit, ..
                } => {
                    let alloc = self
                        .server
                        .allocation(allocation)
                        .expect("lease asked for an allocation that is gone");
                    assert!(alloc.relayed().is_none() && limit > 0);
                    self.pending_leases.push(allocation);
                }
                Event::ReleaseLease { allocation, .. } => {
                    assert!(
                        self.leased.remove(&allocation),
                        "lease released that was never granted"
                    );
                }
                Event::Offload {
                    allocation,
                    channel,
                    client,
                    peer,
                } => {
                    let alloc = self
                        .server
                        .allocation(allocation)
                        .expect("Offload for an allocation that is gone");
                    assert_eq!(alloc.tuple(), client);
                    assert_eq!(
                        client.transport,
                        Transport::Udp,
                        "Offload of a stream client"
                    );
                    assert!(
                        !alloc.bandwidth_limited(),
                        "Offload of a limited allocation"
                    );
                    assert!(
                        self.offloaded.insert((allocation, channel, peer)),
                        "Offload twice without Unoffload"
                    );
                }
                Event::Unoffload {
                    allocation,
                    channel,
                    peer,
                    ..
                } => {
                    assert!(
                        self.offloaded.remove(&(allocation, channel, peer)),
                        "Unoffload of what was not offloaded"
                    );
                }
                Event::Ended(ended) => {
                    assert!(self.server.allocation(ended.allocation).is_none());
                    assert!(
                        !self.offloaded.iter().any(|e| e.0 == ended.allocation),
                        "an ended allocation left entries in the kernel table"
                    );
                    assert_eq!(
                        self.relays.get(&ended.allocation),
                        Some(&ended.relayed),
                        "Ended for an allocation without a relay socket"
                    );
                }
                Event::CloseRelay { allocation } => {
                    assert!(
                        self.server.allocation(allocation).is_none(),
                        "CloseRelay for a live allocation"
                    );
                    for addr in [&mut self.dual_relays, &mut self.opening]
                        .into_iter()
                        .filter_map(|relays| relays.remove(&allocation))
                    {
                        self.sockets.used.remove(&addr);
                    }
                    self.relay_closed(allocation);
                    if let Some(addr) = self.relays.remove(&allocation) {
                        self.sockets.used.remove(&addr);
                        self.closed.push(allocation);
                        if self.closed.len() > 4 {
                            self.closed.remove(0);
                        }
                    }
                }
            }
        }
        for (id, addr) in &self.relays {
            let alloc = self
                .server
                .allocation(*id)
                .expect("relay socket left open after its allocation ended");
            assert_eq!(alloc.relayed(), Some(*addr));
        }
        for alloc in self.server.allocations() {
            if let Some(relayed) = alloc.relayed() {
                assert_eq!(self.relays.get(&alloc.id()), Some(&relayed));
            }
            assert_eq!(
                self.dual_relays.get(&alloc.id()).copied(),
                alloc.relayed_addresses().nth(1),
                "a dual allocation's second relay socket"
            );
        }
    }

    /// Binds a fake relay socket as `relay::open` would, and gives the core the result.
    pub(super) fn open_relay(
        &mut self,
        allocation: AllocationId,
        family: Family,
        port: PortRequest,
    ) {
        let alloc = self
            .server
            .allocation(allocation)
            .expect("OpenRelay for an allocation that is gone");
        assert!(alloc.relayed().is_none() && !self.relays.contains_key(&allocation));
        // A dual allocation asks for its second socket (of the other family) after the first.
        let second = self.opening.contains_key(&allocation);
        let tuple = alloc.tuple();
        let ip = match family {
            Family::V4 => self.relay_v4.map(IpAddr::V4),
            Family::V6 => self.config.relay.address_v6.map(IpAddr::V6),
        };
        let result = match (ip, self.outcome) {
            (_, 1) | (None, _) => Err(RelayOpenError::NoPort),
            (_, 2) => Err(RelayOpenError::BadToken),
            (Some(ip), _) => self.bind(ip, port),
        };
        let mut out = std::mem::take(&mut self.out);
        let answer = self
            .server
            .handle_relay_opened(self.now, allocation, result, &mut out);
        let Some((to, n)) = answer else {
            // The first relay socket of a dual allocation: the core asks for the second next.
            assert!(
                !second,
                "no answer once both relay sockets of a dual allocation are settled"
            );
            assert_eq!(family, Family::V4, "a dual allocation opens IPv4 first");
            if let Ok(addr) = result {
                self.opening.insert(allocation, addr);
            }
            self.out = out;
            return;
        };
        let first = self.opening.remove(&allocation);
        assert_eq!(to, tuple);
        assert!(n > 0 && n <= out.len());
        let t = tuple_of(to);
        let tid = self.allocate_tid.get(&t).copied();
        let reply = out[..n].to_vec();
        self.out = out;
        self.check_reply(
            t,
            tid.map(|tid| (Method::ALLOCATE, Class::Request, tid)),
            &reply,
        );
        let msg = Message::parse(&reply).expect("checked above");
        let granted = self.server.allocation(allocation).map(|a| {
            let addresses: Vec<SocketAddr> = a.relayed_addresses().collect();
            addresses
        });
        match granted {
            Some(addresses) => {
                assert_eq!(msg.class(), Class::Success);
                // The first socket's address (or this one's, if the first had no port), then
                // this one's if both opened.
                let mut expected: Vec<SocketAddr> = first.into_iter().chain(result.ok()).collect();
                assert_eq!(addresses, expected, "relayed addresses");
                for addr in &mut expected {
                    if let (SocketAddr::V4(_), Some(public)) =
                        (*addr, self.config.relay.public_address)
                    {
                        *addr = SocketAddr::from((public, addr.port()));
                    }
                }
                let advertised: Vec<SocketAddr> = msg
                    .attributes()
                    .filter(|a| a.typ == attr::XOR_RELAYED_ADDRESS)
                    .filter_map(|a| attr::decode_xor_address(a.value, &msg.transaction_id()).ok())
                    .collect();
                assert_eq!(advertised, expected, "XOR-RELAYED-ADDRESS");
                self.relays.insert(allocation, addresses[0]);
                if let Some(&second) = addresses.get(1) {
                    self.dual_relays.insert(allocation, second);
                }
            }
            None => {
                assert_eq!(msg.class(), Class::Error);
                assert!(first.is_none(), "refused, though a relay socket opened");
            }
        }
    }

    /// A free fake port for `request`, in the configured range.
    pub(super) fn bind(
        &mut self,
        ip: IpAddr,
        request: PortRequest,
    ) -> Result<SocketAddr, RelayOpenError> {
        let PortRange { first, last } = self.config.relay.ports;
        let sockets = &mut self.sockets;
        let free =
            |used: &BTreeSet<SocketAddr>, port: u16| !used.contains(&SocketAddr::new(ip, port));
        let port = match request {
            PortRequest::Any => (first..=last).find(|&p| free(&sockets.used, p)),
            PortRequest::Even => (first..=last).find(|&p| p % 2 == 0 && free(&sockets.used, p)),
            PortRequest::EvenReserveNext(token) => {
                let pair = (first..last)
                    .find(|&p| p % 2 == 0 && free(&sockets.used, p) && free(&sockets.used, p + 1));
                if let Some(p) = pair {
                    let odd = SocketAddr::new(ip, p + 1);
                    sockets.used.insert(odd);
                    sockets.reserved.insert(token, odd);
                }
                pair
            }
            PortRequest::Reserved(token) => {
                return sockets
                    .reserved
                    .remove(&token)
                    .ok_or(RelayOpenError::BadToken);
            }
        };
        let addr = SocketAddr::new(ip, port.ok_or(RelayOpenError::NoPort)?);
        sockets.used.insert(addr);
        Ok(addr)
    }
}
