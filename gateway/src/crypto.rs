//! The TLS crypto provider every rustls configuration of the gateway uses
//! (listeners, upstreams, alert webhooks): aws-lc-rs.
//!
//! Chosen by measurement (rustls 0.23.46, in memory, one core of the 2-core
//! development machine, TLS 1.3, X25519, no resumption, median of 5
//! interleaved rounds of 1000): full handshakes per second with the client
//! fixed on aws-lc-rs and the server on each provider were 963 with ring
//! against 3,006 with aws-lc-rs for an ECDSA P-256 certificate (3.1x), and
//! 1,011 against 3,654 for Ed25519 (3.6x); AES-128-GCM bulk transfer was
//! 1.13x faster. The price is a C library (AWS-LC, built by `cc`; no cmake
//! or nasm needed on x86_64 Linux) and about a minute more on a clean
//! build. `ring` stays in the build for the module cache's HMAC, where it
//! is not on the request path.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The provider, with its default cipher suites (AEAD only) and key
/// exchange groups.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The CA certificates of the PEM bundle `pem` (read from `file`, which
/// errors name), for verifying peers; an empty bundle is an error.
pub fn root_store(pem: &[u8], file: &dyn std::fmt::Display) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{file}: not a PEM certificate bundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{file}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{file}: no CA certificate in the file"));
    }
    Ok(roots)
}

/// Session-ticket keys for stateless resumption, rotated every six hours.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    rustls::crypto::aws_lc_rs::Ticketer::new()
}
