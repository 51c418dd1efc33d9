//! Dual-stack allocations (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY, §18.13
//! ADDRESS-ERROR-CODE) in the core, with simulated time.

use super::*;

/// A public IPv6 peer (the test policy allows public addresses of either family).
const PEER_V6: &str = "[2606:4700::1111]:6000";

fn dual_harness() -> Harness {
    Harness::with(|c| c.relay_v6 = true)
}

/// An Allocate with ADDITIONAL-ADDRESS-FAMILY `value` under code point `typ`, and `extra`.
fn allocate_dual(
    c: &mut Client,
    h: &mut Harness,
    typ: u16,
    value: &[u8],
    extra: impl Fn(&mut MessageWriter<'_>),
) -> Response {
    c.call(h, Method::ALLOCATE, |w| {
        w.requested_transport(17).unwrap();
        w.attribute(typ, value).unwrap();
        extra(w);
    })
}

/// A plain dual Allocate: ADDITIONAL-ADDRESS-FAMILY IPv6 under the RFC's code point.
fn ask_dual(c: &mut Client, h: &mut Harness) -> Response {
    allocate_dual(c, h, attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0], |_| {})
}

fn relayed_addresses(response: &Response) -> Vec<SocketAddr> {
    let msg = Message::parse(&response.bytes).unwrap();
    msg.attributes()
        .filter(|a| a.typ == attr::XOR_RELAYED_ADDRESS)
        .map(|a| attr::decode_xor_address(a.value, &msg.transaction_id()).unwrap())
        .collect()
}

fn address_error(response: &Response) -> Option<(u8, u16)> {
    response.attr(attr::ADDRESS_ERROR_CODE).map(|v| {
        attr::decode_address_error_code(&v)
            .map(|(f, code, _)| (f, code))
            .unwrap()
    })
}

fn dual_alice(h: &mut Harness) -> (Client, Vec<SocketAddr>) {
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    let response = ask_dual(&mut c, h);
    assert_eq!(response.class, Class::Success, "{response:?}");
    (c, relayed_addresses(&response))
}

#[test]
fn additional_address_family_gets_two_relayed_addresses_ipv4_first() {
    let mut h = dual_harness();
    let (c, relayed) = dual_alice(&mut h);
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6(), "{relayed:?}");
    let alloc = h.server.allocation_of(&c.tuple).unwrap();
    assert_eq!(alloc.relayed(), Some(relayed[0]));
    assert_eq!(alloc.relayed_addresses().collect::<Vec<_>>(), relayed);
    // One allocation, one quota slot, counted once.
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.stats().allocations_created, 1);
    assert_eq!(h.server.node.ledger.total(), 1);
    // The draft's code point (coturn's `turnutils_uclient -Z`) gets the same.
    let mut bob = Client::new(udp("198.51.100.21:5000"), "bob", "builder");
    let response = allocate_dual(
        &mut bob,
        &mut h,
        attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT,
        &[2, 0, 0, 0],
        |_| {},
    );
    let relayed = relayed_addresses(&response);
    assert_eq!(relayed.len(), 2, "{response:?}");
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6(), "{relayed:?}");
    assert_eq!(address_error(&response), None);
}

#[test]
fn a_dual_allocation_relays_to_peers_of_both_families_from_the_matching_address() {
    let mut h = dual_harness();
    let (mut c, relayed) = dual_alice(&mut h);
    let id = relay_of(&h, &c.tuple);
    let v4: SocketAddr = PEER.parse().unwrap();
    let v6: SocketAddr = PEER_V6.parse().unwrap();
    // One CreatePermission for both families: no 443.
    let both = c.call(&mut h, Method::CREATE_PERMISSION, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, v4).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, v6).unwrap();
    });
    assert_eq!(both.class, Class::Success, "{both:?}");
    let alloc = h.server.allocation(id).unwrap();
    assert_eq!(alloc.relayed_for(&v4), Some(relayed[0]));
    assert_eq!(alloc.relayed_for(&v6), Some(relayed[1]));
    let mut out = vec![0u8; 1500];
    for peer in [v4, v6] {
        let indication = c.send_indication(peer, b"to the peer");
        match h
            .server
            .handle_client(h.now, c.tuple, &indication, &mut out)
        {
            ClientAction::Relay {
                allocation,
                peer: to,
                payload,
            } => {
                assert_eq!((allocation, to), (id, peer));
                assert_eq!(&indication[payload], b"to the peer");
            }
            other => panic!("expected a relay to {peer}, got {other:?}"),
        }
        let frame = peer_data(&mut h, id, peer, b"back").expect("relayed to the client");
        let msg = Message::parse(&frame).unwrap();
        assert_eq!(msg.method(), Method::DATA);
        assert_eq!(data_peer(&msg), peer);
    }
    // A channel to the IPv6 peer routes both ways.
    assert_eq!(c.bind(&mut h, 0x4001, v6).class, Class::Success);
    let frame = peer_data(&mut h, id, v6, b"chan").unwrap();
    assert_eq!(&frame[..4], &[0x40, 0x01, 0, 4]);
    let data = [0x40, 0x01, 0, 2, b'h', b'i'];
    match h.server.handle_client(h.now, c.tuple, &data, &mut out) {
        ClientAction::Relay { peer, .. } => assert_eq!(peer, v6),
        other => panic!("expected a relay, got {other:?}"),
    }
    // A Send to either relayed address itself is dropped.
    for own in relayed {
        let indication = c.send_indication(own, b"loop");
        assert_eq!(
            h.server
                .handle_client(h.now, c.tuple, &indication, &mut out),
            ClientAction::None
        );
    }
}

#[test]
fn a_single_family_allocation_still_gets_443_for_the_other_family() {
    let mut h = dual_harness();
    let (mut c, _) = alice(&mut h);
    let v6: SocketAddr = PEER_V6.parse().unwrap();
    assert_eq!(c.permit(&mut h, v6).code, Some(443));
    assert_eq!(c.bind(&mut h, 0x4001, v6).code, Some(443));
}

#[test]
fn invalid_combinations_get_400_and_unknown_families_440() {
    let mut h = dual_harness();
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    let aaf = attr::ADDITIONAL_ADDRESS_FAMILY;
    let v6: &[u8] = &[2, 0, 0, 0];
    // (case, value, another attribute, code); the hostile encodings are in tests/dual_stack.rs.
    type Case<'a> = (&'a str, &'a [u8], Option<(u16, &'a [u8])>, u16);
    let cases: [Case<'_>; 6] = [
        // §7.2 step 9: IPv4 as the additional family.
        ("IPv4", &[1, 0, 0, 0], None, 400),
        // Step 6, step 5, step 8.
        (
            "with RAF",
            v6,
            Some((attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])),
            400,
        ),
        (
            "with a token",
            v6,
            Some((attr::RESERVATION_TOKEN, &[7; 8])),
            400,
        ),
        (
            "with EVEN-PORT R",
            v6,
            Some((attr::EVEN_PORT, &[0x80])),
            400,
        ),
        ("unknown family", &[3, 0, 0, 0], None, 440),
        (
            "twice",
            v6,
            Some((attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, v6)),
            400,
        ),
    ];
    for (case, value, extra, code) in cases {
        let response = allocate_dual(&mut c, &mut h, aaf, value, |w| {
            if let Some((typ, value)) = extra {
                w.attribute(typ, value).unwrap();
            }
        });
        assert_eq!(response.code, Some(code), "{case}: {response:?}");
        assert_eq!(h.server.allocation_count(), 0, "{case}");
    }
    // EVEN-PORT without R is fine: both addresses.
    let response = allocate_dual(&mut c, &mut h, aaf, &[2, 0, 0, 0], |w| {
        w.attribute(attr::EVEN_PORT, &[0]).unwrap()
    });
    assert_eq!(relayed_addresses(&response).len(), 2, "{response:?}");
}

#[test]
fn a_family_that_cannot_be_served_gets_address_error_code_in_the_success() {
    // No IPv6 relay address: the IPv4 allocation, and 440 for IPv6.
    let mut h = Harness::new();
    let (c, relayed) = {
        let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
        let response = ask_dual(&mut c, &mut h);
        assert_eq!(response.class, Class::Success);
        assert_eq!(address_error(&response), Some((attr::FAMILY_IPV6, 440)));
        (c, relayed_addresses(&response))
    };
    assert_eq!(relayed.len(), 1);
    assert!(relayed[0].is_ipv4());
    assert_eq!(
        h.server
            .allocation_of(&c.tuple)
            .unwrap()
            .relayed_addresses()
            .count(),
        1
    );

    // No IPv6 port: the IPv4 allocation, and 508 for IPv6.
    let mut h = dual_harness();
    h.fail_open_v6 = Some(RelayOpenError::NoPort);
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    let response = ask_dual(&mut c, &mut h);
    assert_eq!(response.class, Class::Success);
    assert_eq!(address_error(&response), Some((attr::FAMILY_IPV6, 508)));
    let relayed = relayed_addresses(&response);
    assert!(relayed.len() == 1 && relayed[0].is_ipv4(), "{relayed:?}");
    // Its peers are IPv4 only.
    let v6: SocketAddr = PEER_V6.parse().unwrap();
    assert_eq!(c.permit(&mut h, v6).code, Some(443));
    // A Refresh naming IPv6 names a family it does not have.
    let refresh = c.call(&mut h, Method::REFRESH, |w| {
        w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap()
    });
    assert_eq!(refresh.code, Some(443));

    // No port of either family: 508, and nothing left.
    let mut h = dual_harness();
    h.fail_open = Some(RelayOpenError::NoPort);
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    let response = ask_dual(&mut c, &mut h);
    assert_eq!(response.code, Some(508));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.node.ledger.total(), 0);
}

#[test]
fn refresh_keeps_one_lifetime_for_both_addresses_and_deletion_ends_both() {
    let mut h = dual_harness();
    let (mut c, relayed) = dual_alice(&mut h);
    let id = relay_of(&h, &c.tuple);
    // A Refresh naming either family refreshes the allocation (§8.2: no 443, it has both).
    for family in [1u8, 2] {
        let refresh = c.call(&mut h, Method::REFRESH, |w| {
            w.u32(attr::LIFETIME, 1200).unwrap();
            w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0])
                .unwrap()
        });
        assert_eq!(refresh.class, Class::Success, "{refresh:?}");
        assert_eq!(refresh.lifetime(), 1200);
    }
    assert_eq!(
        h.server.allocation(id).unwrap().expires(),
        h.now + Duration::from_secs(1200)
    );
    // LIFETIME 0 ends it: one Ended naming both addresses, one CloseRelay (both sockets).
    let tid = c.tid();
    let delete = c.request(Method::REFRESH, tid, |w| w.u32(attr::LIFETIME, 0).unwrap());
    let action = h.server.handle_client(h.now, c.tuple, &delete, &mut h.out);
    assert!(matches!(action, ClientAction::Reply(_)), "{action:?}");
    let events: Vec<Event> = std::iter::from_fn(|| h.server.poll_event()).collect();
    let ended = events
        .iter()
        .find_map(|e| match e {
            Event::Ended(ended) => Some(ended.clone()),
            _ => None,
        })
        .expect("an Ended event");
    assert_eq!((ended.relayed, ended.dual), (relayed[0], Some(relayed[1])));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::CloseRelay { .. }))
            .count(),
        1
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.node.ledger.total(), 0);
}

#[test]
fn a_dual_allocation_expires_whole() {
    let mut h = dual_harness();
    let (c, _) = dual_alice(&mut h);
    let id = relay_of(&h, &c.tuple);
    h.advance(Duration::from_secs(600));
    assert!(h.server.allocation(id).is_none());
    assert_eq!(h.server.stats().allocations_expired, 1);
}

/// The XOR-PEER-ADDRESS of a Data indication.
fn data_peer(msg: &Message<'_>) -> SocketAddr {
    attr::decode_xor_address(
        msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
        &msg.transaction_id(),
    )
    .unwrap()
}
