//! TLS for stream clients: the acceptor built from the configured PEM files, swapped whole
//! by a reload.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// The node's TLS acceptor; swapped whole when a reload brings a new certificate.
pub(in crate::net) type SharedAcceptor = Arc<arc_swap::ArcSwapOption<TlsAcceptor>>;

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(
    certificate: &std::path::Path,
    private_key: &std::path::Path,
) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "tls.certificate: cannot read {}: {e}",
                certificate.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls.certificate: no certificate in {}",
            certificate.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| {
        format!(
            "tls.private-key: cannot read {}: {e}",
            private_key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate and key do not match: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
