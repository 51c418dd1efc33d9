//! TCP allocations (RFC 6062) in the core: every error code of Allocate, Connect and
//! ConnectionBind, the ConnectionBind deadline to the instant, peer-initiated connections.

use super::*;

const TCP_CLIENT: &str = "198.51.100.20:5001";
const DATA_CLIENT: &str = "198.51.100.20:5002";

fn tcp(client: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        ..udp(client)
    }
}

fn harness() -> Harness {
    Harness::with(|c| c.tcp_relay = true)
}

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

/// Alice's TCP allocation on a TCP control connection, with a permission for [`PEER`].
fn tcp_alice(h: &mut Harness) -> (Client, SocketAddr) {
    let mut c = Client::new(tcp(TCP_CLIENT), "alice", "wonderland");
    let response = c.call(h, Method::ALLOCATE, |w| w.requested_transport(6).unwrap());
    assert_eq!(response.class, Class::Success, "{response:?}");
    assert!(response.attr(attr::RESERVATION_TOKEN).is_none());
    assert!(h.server.allocation_of(&c.tuple).unwrap().is_tcp());
    assert_eq!(c.permit(h, peer()).class, Class::Success);
    (c, response.addr(attr::XOR_RELAYED_ADDRESS))
}

fn connect(c: &mut Client, h: &mut Harness, peer: SocketAddr) -> Option<Response> {
    let tid = c.tid();
    let request = c.request(Method::CONNECT, tid, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap()
    });
    h.send(c.tuple, &request)
}

/// Connect answered once the I/O layer reports `result`.
fn connect_with(
    c: &mut Client,
    h: &mut Harness,
    result: Result<(), ConnectError>,
) -> (ConnectionId, Response) {
    assert!(
        connect(c, h, peer()).is_none(),
        "answered before connecting"
    );
    let (connection, to) = h.connects.pop().expect("Event::Connect");
    assert_eq!(to, peer());
    let (tuple, n) = h
        .server
        .handle_connect_result(h.now, connection, result, &mut h.out)
        .expect("an answer");
    assert_eq!(tuple, c.tuple);
    let bytes = h.out[..n].to_vec();
    let msg = Message::parse(&bytes).unwrap();
    assert!(msg.check_integrity(c.key()).is_ok(), "signed");
    let code = msg
        .get(attr::ERROR_CODE)
        .map(|v| attr::decode_error_code(v).unwrap().0);
    let class = msg.class();
    (connection, Response { class, code, bytes })
}

/// How many responses of `method` with `code` the core counted (0 = any code not listed).
fn responses(stats: &Stats, method: &str, code: u16) -> u64 {
    let row = RESPONSE_METHODS.iter().position(|m| *m == method).unwrap();
    let column = RESPONSE_CODES.iter().position(|c| *c == code).unwrap();
    stats.responses[row][column]
}

fn connection_id_of(response: &Response) -> u32 {
    attr::decode_connection_id(&response.attr(attr::CONNECTION_ID).expect("CONNECTION-ID")).unwrap()
}

/// A ConnectionBind from a new connection (`data`) as `user`, with `id_value` as CONNECTION-ID
/// (`None`: none).
fn bind(
    h: &mut Harness,
    data: FiveTuple,
    (user, password): (&str, &str),
    ids: &[&[u8]],
) -> Response {
    let mut c = Client::new(data, user, password);
    let ids: Vec<Vec<u8>> = ids.iter().map(|v| v.to_vec()).collect();
    c.call(h, Method::CONNECTION_BIND, move |w| {
        for id in &ids {
            w.attribute(attr::CONNECTION_ID, id).unwrap();
        }
    })
}

/// Alice's ConnectionBind for `id` on a new TCP connection.
fn bind_alice(h: &mut Harness, id: ConnectionId) -> Response {
    bind(
        h,
        tcp(DATA_CLIENT),
        ("alice", "wonderland"),
        &[&id.0.to_be_bytes()],
    )
}

#[test]
fn tcp_allocate_needs_tcp_or_tls_the_switch_and_no_udp_only_attributes() {
    // Off (the default): 442 as before, on any transport.
    let mut h = Harness::new();
    let mut c = Client::new(tcp(TCP_CLIENT), "alice", "wonderland");
    let off = c.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(6).unwrap()
    });
    assert_eq!(off.code, Some(442));
    let mut h = harness();
    // §5.1 item 2: over UDP, 400.
    let mut u = Client::new(udp(CLIENT), "alice", "wonderland");
    let over_udp = u.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(6).unwrap()
    });
    assert_eq!(over_udp.code, Some(400), "{over_udp:?}");
    // §5.1 item 1: neither UDP nor TCP: 442.
    let other = c.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(132).unwrap()
    });
    assert_eq!(other.code, Some(442));
    // §5.1 item 3: DONT-FRAGMENT, EVEN-PORT, RESERVATION-TOKEN: 400.
    for (typ, value) in [
        (attr::DONT_FRAGMENT, &[][..]),
        (attr::EVEN_PORT, &[0x80][..]),
        (attr::RESERVATION_TOKEN, &[1; 8][..]),
    ] {
        let refused = c.call(&mut h, Method::ALLOCATE, |w| {
            w.requested_transport(6).unwrap();
            w.attribute(typ, value).unwrap();
        });
        assert_eq!(refused.code, Some(400), "attribute {typ:#x}: {refused:?}");
    }
    assert_eq!(h.server.allocation_count(), 0);
    tcp_alice(&mut h);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn connect_errors_437_400_403_446_447() {
    let mut h = harness();
    // No allocation on this connection: 437.
    let mut nobody = Client::new(tcp("198.51.100.20:6000"), "alice", "wonderland");
    let none = nobody.call(&mut h, Method::CONNECT, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer()).unwrap()
    });
    assert_eq!(none.code, Some(437));
    // A UDP allocation: 400.
    let (mut u, _) = alice(&mut h);
    let on_udp = u.call(&mut h, Method::CONNECT, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer()).unwrap()
    });
    assert_eq!(on_udp.code, Some(400));
    let (mut c, _) = tcp_alice(&mut h);
    // No XOR-PEER-ADDRESS, or a broken one: 400.
    assert_eq!(c.call(&mut h, Method::CONNECT, |_| {}).code, Some(400));
    let broken = c.call(&mut h, Method::CONNECT, |w| {
        w.attribute(attr::XOR_PEER_ADDRESS, &[0, 1, 2]).unwrap()
    });
    assert_eq!(broken.code, Some(400));
    // A peer without a permission, or one the policy refuses: 403.
    let unpermitted: SocketAddr = "203.0.113.99:80".parse().unwrap();
    let refused = connect(&mut c, &mut h, unpermitted).unwrap();
    assert_eq!(refused.code, Some(403));
    let private: SocketAddr = "10.1.2.3:80".parse().unwrap();
    assert_eq!(connect(&mut c, &mut h, private).unwrap().code, Some(403));
    assert!(h.connects.is_empty(), "nothing refused was connected to");
    // Being connected, pending, and bound: 446 each time.
    assert!(connect(&mut c, &mut h, peer()).is_none());
    assert_eq!(connect(&mut c, &mut h, peer()).unwrap().code, Some(446));
    let (connection, to) = h.connects.remove(0);
    assert_eq!(to, peer());
    assert!(h.connects.is_empty(), "446 asked for no second connection");
    // Failed: 447, and the peer may be tried again.
    let (n_to, n) = h
        .server
        .handle_connect_result(h.now, connection, Err(ConnectError::Failed), &mut h.out)
        .unwrap();
    assert_eq!(n_to, c.tuple);
    let msg = Message::parse(&h.out[..n]).unwrap();
    assert_eq!(
        attr::decode_error_code(msg.get(attr::ERROR_CODE).unwrap())
            .unwrap()
            .0,
        447
    );
    assert_eq!(h.server.tcp_connection_count(), 0);
    let (_, capacity) = connect_with(&mut c, &mut h, Err(ConnectError::NoCapacity));
    assert_eq!(capacity.code, Some(508));
    let (id, ok) = connect_with(&mut c, &mut h, Ok(()));
    assert_eq!(ok.class, Class::Success);
    assert_eq!(connection_id_of(&ok), id.0);
    assert_eq!(connect(&mut c, &mut h, peer()).unwrap().code, Some(446));
    let stats = h.server.stats();
    assert_eq!(
        (stats.tcp_connections_opened, stats.tcp_connections_failed),
        (1, 2)
    );
    // Each answer is counted under Connect and its own code, none as "other".
    for (code, times) in [
        (200, 1),
        (400, 3),
        (403, 2),
        (437, 1),
        (446, 2),
        (447, 1),
        (508, 1),
    ] {
        assert_eq!(responses(&stats, "connect", code), times, "connect {code}");
    }
    assert_eq!(responses(&stats, "other", 0), 0);
    assert_eq!(responses(&stats, "connect", 0), 0);
}

#[test]
fn connection_bind_errors_and_success() {
    let mut h = harness();
    let (mut c, _) = tcp_alice(&mut h);
    let (id, ok) = connect_with(&mut c, &mut h, Ok(()));
    assert_eq!(ok.class, Class::Success);
    let value = id.0.to_be_bytes();
    let alice = ("alice", "wonderland");
    // Over UDP: 400.
    assert_eq!(
        bind(&mut h, udp(DATA_CLIENT), alice, &[&value]).code,
        Some(400)
    );
    // On the control connection: 400.
    let mut control = Client::new(c.tuple, "alice", "wonderland");
    control.use_nonce_of(&c);
    let on_control = control.call(&mut h, Method::CONNECTION_BIND, |w| {
        w.attribute(attr::CONNECTION_ID, &value).unwrap()
    });
    assert_eq!(on_control.code, Some(400));
    // Missing, truncated, oversized, repeated, unknown: 400.
    let data = tcp(DATA_CLIENT);
    assert_eq!(bind(&mut h, data, alice, &[]).code, Some(400));
    assert_eq!(bind(&mut h, data, alice, &[&value[..3]]).code, Some(400));
    assert_eq!(bind(&mut h, data, alice, &[&[1; 8]]).code, Some(400));
    assert_eq!(bind(&mut h, data, alice, &[&value, &value]).code, Some(400));
    let unknown = (id.0 ^ 0x55).to_be_bytes();
    assert_eq!(bind(&mut h, data, alice, &[&unknown]).code, Some(400));
    // Another user's credentials: 441.
    let bob = bind(&mut h, data, ("bob", "builder"), &[&value]);
    assert_eq!(bob.code, Some(441), "{bob:?}");
    // None of that touched the connection: it binds, once.
    let bound = bind(&mut h, data, alice, &[&value]);
    assert_eq!(bound.class, Class::Success, "{bound:?}");
    assert_eq!(h.server.stats().tcp_connections_bound, 1);
    let again = bind(&mut h, tcp("198.51.100.20:5003"), alice, &[&value]);
    assert_eq!(again.code, Some(400));
    let stats = h.server.stats();
    for (code, times) in [(200, 1), (400, 8), (441, 1)] {
        assert_eq!(
            responses(&stats, "connection_bind", code),
            times,
            "bind {code}"
        );
    }
    assert_eq!(responses(&stats, "other", 0), 0);
    // A bound connection has no deadline.
    h.advance(BIND_DEADLINE * 2);
    h.drain_events();
    assert!(h.closed_connections.is_empty());
    assert_eq!(h.server.tcp_connection_count(), 1);
    // Once its splice ends, the peer may be connected to again.
    h.server.handle_tcp_connection_closed(id);
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert!(connect(&mut c, &mut h, peer()).is_none());
}

#[test]
fn an_unbound_connection_is_closed_thirty_seconds_after_it_opened() {
    let mut h = harness();
    let (mut c, _) = tcp_alice(&mut h);
    let opened = h.now;
    let (id, _) = connect_with(&mut c, &mut h, Ok(()));
    assert_eq!(h.server.poll_timeout(), Some(opened + BIND_DEADLINE));
    h.advance(BIND_DEADLINE - Duration::from_millis(1));
    h.drain_events();
    assert!(h.closed_connections.is_empty());
    h.advance(Duration::from_millis(1));
    h.drain_events();
    assert_eq!(h.closed_connections, vec![id]);
    assert_eq!(h.server.stats().tcp_bind_timeouts, 1);
    assert_eq!(bind_alice(&mut h, id).code, Some(400));
}

#[test]
fn a_peer_connection_needs_a_permission_and_is_announced() {
    let mut h = harness();
    let (c, relayed) = tcp_alice(&mut h);
    let id = relay_of(&h, &c.tuple);
    let mut out = vec![0u8; 1500];
    let stranger: SocketAddr = "203.0.113.77:4000".parse().unwrap();
    assert!(
        h.server
            .handle_peer_connection(h.now, id, stranger, &mut out)
            .is_none()
    );
    let private: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    assert!(
        h.server
            .handle_peer_connection(h.now, id, private, &mut out)
            .is_none()
    );
    let from: SocketAddr = "203.0.113.5:4000".parse().unwrap();
    let (connection, to, n) = h
        .server
        .handle_peer_connection(h.now, id, from, &mut out)
        .expect("permitted");
    assert_eq!(to, c.tuple);
    let msg = Message::parse(&out[..n]).unwrap();
    assert_eq!(
        (msg.method(), msg.class()),
        (Method::CONNECTION_ATTEMPT, Class::Indication)
    );
    let tid = msg.transaction_id();
    assert_eq!(
        attr::decode_xor_address(msg.get(attr::XOR_PEER_ADDRESS).unwrap(), &tid).unwrap(),
        from
    );
    assert_eq!(
        attr::decode_connection_id(msg.get(attr::CONNECTION_ID).unwrap()).unwrap(),
        connection.0
    );
    assert_ne!(relayed, from);
    // A UDP allocation takes no connections.
    let (u, _) = alice(&mut h);
    let udp_id = relay_of(&h, &u.tuple);
    assert!(
        h.server
            .handle_peer_connection(h.now, udp_id, from, &mut out)
            .is_none()
    );
    // It binds like a connection made by Connect.
    let bound = bind(
        &mut h,
        tcp(DATA_CLIENT),
        ("alice", "wonderland"),
        &[&connection.0.to_be_bytes()],
    );
    assert_eq!(bound.class, Class::Success);
}

#[test]
fn a_tcp_allocation_takes_no_channels_nor_send_indications() {
    let mut h = harness();
    let (mut c, _) = tcp_alice(&mut h);
    assert_eq!(c.bind(&mut h, 0x4001, peer()).code, Some(400));
    let send = c.send_indication(peer(), b"hello");
    assert!(h.send(c.tuple, &send).is_none());
    assert_eq!(h.server.stats().to_peer_packets, 0);
}

#[test]
fn deleting_a_tcp_allocation_forgets_its_connections() {
    let mut h = harness();
    let (mut c, _) = tcp_alice(&mut h);
    let (id, _) = connect_with(&mut c, &mut h, Ok(()));
    assert_eq!(h.server.tcp_connection_count(), 1);
    let deleted = c.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(deleted.class, Class::Success);
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert_eq!(bind_alice(&mut h, id).code, Some(400));
}

#[test]
fn connection_ids_carry_the_worker_index() {
    let mut h = harness();
    h.server.set_worker_index(3);
    let (mut c, _) = tcp_alice(&mut h);
    let (id, _) = connect_with(&mut c, &mut h, Ok(()));
    assert_eq!(id.worker(), 3);
}

#[test]
fn a_reload_changes_the_rate_of_running_splices() {
    let mut h = harness();
    let (mut c, _) = tcp_alice(&mut h);
    let (id, _) = connect_with(&mut c, &mut h, Ok(()));
    assert_eq!(bind_alice(&mut h, id).class, Class::Success);
    // The rate the splice paces itself by: shared, and no limit yet.
    let rate = |h: &Harness| {
        let allocation = h.server.allocation_of(&c.tuple).unwrap();
        allocation.tcp.as_ref().unwrap().bandwidth.clone().unwrap()
    };
    let splice = rate(&h);
    let second = 1_000_000_000;
    assert_eq!(splice.bits_per_second(), 0);
    assert_eq!(splice.delay(second, 1_000_000), 0, "no limit, no wait");
    let reload = |h: &mut Harness, bandwidth: Option<u64>| {
        let mut config = h.server.config.clone();
        config.allocation_bandwidth = bandwidth;
        let (policy, nonces) = (h.server.policy.clone(), h.server.nonces.clone());
        h.server.reconfigure(h.now, config, policy, nonces);
    };
    // 8 kbit/s: 2,000 bytes are 2 s of sending, 1 s past the burst.
    reload(&mut h, Some(8_000));
    assert!(
        Arc::ptr_eq(&splice, &rate(&h)),
        "the same rate, changed in place"
    );
    assert_eq!(splice.bits_per_second(), 8_000);
    assert_eq!(splice.delay(2 * second, 2_000), second);
    // Lifted again: the splice goes at once.
    reload(&mut h, None);
    assert_eq!(splice.bits_per_second(), 0);
    assert_eq!(splice.delay(2 * second, 1_000_000), 0);
}
