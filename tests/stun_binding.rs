//! STUN Binding requests answered without credentials, over UDP and TCP, with the client's
//! own address in XOR-MAPPED-ADDRESS.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::{BINDING_REQUEST, Server, TestConfig};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a Binding success response to [`BINDING_REQUEST`] and returns its
/// XOR-MAPPED-ADDRESS.
fn mapped_address(response: &[u8]) -> SocketAddr {
    assert!(response.len() >= 20, "short response: {response:?}");
    assert_eq!(
        response[..2],
        [0x01, 0x01],
        "not a Binding success response"
    );
    assert_eq!(response[4..8], BINDING_REQUEST[4..8], "magic cookie");
    assert_eq!(response[8..20], BINDING_REQUEST[8..20], "transaction ID");
    let length = usize::from(u16::from_be_bytes([response[2], response[3]]));
    assert_eq!(response.len(), 20 + length, "message length");
    let mut rest = &response[20..];
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = &rest[4..4 + len];
        if kind == 0x0020 {
            assert_eq!(value[1], 0x01, "IPv4 family");
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            let ip = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ 0x2112_a442;
            return SocketAddr::from((Ipv4Addr::from(ip), port));
        }
        rest = &rest[(4 + len).next_multiple_of(4).min(rest.len())..];
    }
    panic!("no XOR-MAPPED-ADDRESS in {response:?}");
}

#[test]
fn binding_over_udp() {
    let server = Server::with(&TestConfig::default());
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    socket
        .send_to(&BINDING_REQUEST, server.addr("udp"))
        .expect("send");
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf).expect("a Binding response");
    assert_eq!(from, server.addr("udp"));
    assert_eq!(mapped_address(&buf[..n]), socket.local_addr().unwrap());
}

#[test]
fn binding_over_tcp() {
    let server = Server::with(&TestConfig::default());
    let mut stream = TcpStream::connect_timeout(&server.addr("tcp"), TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(&BINDING_REQUEST).expect("send");
    let mut response = vec![0u8; 20];
    stream.read_exact(&mut response).expect("a response header");
    let length = usize::from(u16::from_be_bytes([response[2], response[3]]));
    response.resize(20 + length, 0);
    stream
        .read_exact(&mut response[20..])
        .expect("the attributes");
    assert_eq!(mapped_address(&response), stream.local_addr().unwrap());
}
