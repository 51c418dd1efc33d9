//! A TLS client over a blocking `TcpStream` (rustls, ring): accepts any certificate, since the
//! tests check the server's behaviour on the stream, and reports the certificate it was shown.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A TLS stream to the server.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// How long a TLS handshake with the server may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client (SNI `localhost`) that accepts any certificate.
fn client() -> rustls::ClientConnection {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("a valid server name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client")
}

/// The first flight of a rustls client: the TLS records of its ClientHello.
pub fn client_hello() -> Vec<u8> {
    let mut conn = client();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("write into a Vec");
    }
    assert!(hello.len() > 100, "a ClientHello of {} bytes", hello.len());
    hello
}

/// Connects to `addr` and completes the TLS handshake (SNI `localhost`) within
/// [`HANDSHAKE_TIMEOUT`]; fails the test otherwise.
pub fn connect(addr: SocketAddr) -> TlsStream {
    let tcp = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    tcp.set_nodelay(true).expect("set TCP_NODELAY");
    connect_over(tcp)
}

/// Completes the TLS handshake (SNI `localhost`) on a connection already open (and perhaps
/// already written to, e.g. a PROXY protocol header) within [`HANDSHAKE_TIMEOUT`]; fails the
/// test otherwise.
pub fn connect_over(tcp: TcpStream) -> TlsStream {
    let conn = client();
    let addr = tcp.peer_addr().expect("a connected stream");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while stream.conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no TLS handshake with {addr} within {HANDSHAKE_TIMEOUT:?}"
        );
        stream
            .sock
            .set_read_timeout(Some(left))
            .expect("set a read timeout");
        stream
            .conn
            .complete_io(&mut stream.sock)
            .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    }
    stream
}

/// The DER of the end-entity certificate the server presented on `stream`.
pub fn peer_certificate(stream: &TlsStream) -> Vec<u8> {
    stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .to_vec()
}

/// The DER of the certificate a fresh TLS handshake with `addr` sees.
pub fn server_certificate(addr: SocketAddr) -> Vec<u8> {
    peer_certificate(&connect(addr))
}
