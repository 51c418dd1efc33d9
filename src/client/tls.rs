//! The client side of TURN over TLS: rustls (ring), verifying the server against given roots,
//! or accepting any certificate for tests.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::ClientError;

/// How a TLS client checks the server's certificate.
#[derive(Clone, Debug)]
pub enum TlsVerify {
    /// Against these trust anchors, for the name in [`ClientTls::server_name`].
    Roots(Arc<RootCertStore>),
    /// Not at all: any certificate is accepted (signatures are still checked). For tests and
    /// soak runs against a self-signed server only.
    AcceptAnyCertificate,
}

/// TLS settings of a client.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub verify: TlsVerify,
    /// The name sent as SNI and checked against the certificate; `None` uses the server's IP
    /// address.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Verifies the server against the CA certificates in a PEM file.
    pub fn with_ca_file(path: &Path) -> Result<Self, ClientError> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Config(format!(
                "{}: no certificate in the file",
                path.display()
            )));
        }
        Ok(ClientTls {
            verify: TlsVerify::Roots(Arc::new(roots)),
            server_name: None,
        })
    }

    /// Accepts whatever certificate the server shows: for tests only.
    pub fn accept_any_certificate() -> Self {
        ClientTls {
            verify: TlsVerify::AcceptAnyCertificate,
            server_name: None,
        }
    }

    /// The rustls configuration and the name to present, for a server at `ip`.
    pub(super) fn connector(
        &self,
        ip: IpAddr,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(format!("TLS versions: {e}")))?;
        let config = match &self.verify {
            TlsVerify::Roots(roots) => builder.with_root_certificates(roots.clone()),
            TlsVerify::AcceptAnyCertificate => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        }
        .with_no_client_auth();
        let name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| ClientError::Config(format!("TLS server name {name:?}: {e}")))?,
            None => ServerName::IpAddress(ip.into()),
        };
        Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    }
}

/// A verifier that accepts any certificate but still checks the handshake signatures, so the
/// connection is at least to whoever holds the certificate's key.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
