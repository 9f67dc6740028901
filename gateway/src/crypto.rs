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
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The provider, with its default cipher suites (AEAD only) and key
/// exchange groups.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The gateway's own outbound HTTP/1.1 client (alert webhooks, span
/// export): `http://` or `https://` verified against `roots` (the webpki
/// roots when `None`), connecting within `connect_timeout`.
pub type OutboundClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A new [`OutboundClient`].
pub fn outbound_client(
    roots: Option<RootCertStore>,
    connect_timeout: Duration,
) -> Result<OutboundClient, String> {
    let roots = roots.unwrap_or_else(|| webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect());
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
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
