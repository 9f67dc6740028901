//! Upstream server groups: a pooled client per group (HTTP/1.1 keep-alive,
//! HTTP/2 over TLS, or h2c), TLS to `https://` servers (verified against
//! the webpki roots or a configured CA, SNI, optional client certificate),
//! round-robin over the group's servers, connect and response timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};

use crate::body::ProxyBody;
use crate::config::{UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig, server_authority};
use crate::error::ProxyError;

/// The server that answered, in the response's extensions (for the
/// access log).
#[derive(Debug, Clone)]
pub struct UpstreamServer(pub Authority);

/// One named group of servers.
pub struct Upstream {
    name: Arc<str>,
    config: UpstreamConfig,
    servers: Vec<Authority>,
    scheme: Scheme,
    next: AtomicUsize,
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// SHA-256 of the TLS files' content: a reload that changes them
    /// builds a new client even if the config text is the same.
    files_digest: [u8; 32],
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .finish()
    }
}

impl Upstream {
    /// Builds the group. `config` must have passed validation.
    pub fn new(name: &str, config: &UpstreamConfig) -> Result<Self, String> {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                server_authority(s)
                    .parse::<Authority>()
                    .map_err(|e| format!("upstream `{name}`: `{s}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (tls, files_digest) =
            client_tls(config).map_err(|e| format!("upstream `{name}`: tls: {e}"))?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match config.tls.as_ref().and_then(|t| t.server_name.as_deref()) {
            Some(server_name) => {
                let fixed = ServerName::try_from(server_name.to_owned())
                    .map_err(|e| format!("upstream `{name}`: tls.server_name: {e}"))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(fixed))
            }
            None => builder,
        };
        let connector = match config.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
                builder.enable_http2().wrap_connector(http)
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_idle_per_server)
            .http2_only(config.protocol != UpstreamProtocol::Http1)
            .build(connector);
        Ok(Self {
            name: name.into(),
            config: config.clone(),
            servers,
            scheme: if config.is_https() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            next: AtomicUsize::new(0),
            client,
            files_digest,
        })
    }

    /// Whether this group can serve `config` as it is: the same settings
    /// and the same content in its TLS files.
    pub fn serves(&self, name: &str, config: &UpstreamConfig) -> bool {
        *self.name == *name
            && self.config == *config
            && read_files(config).is_ok_and(|(_, digest)| digest == self.files_digest)
    }

    /// How long a response body may stall.
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.config.body_idle_timeout_ms)
    }

    /// The protocol the group speaks.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.config.protocol
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration it was built from (to reuse it across reloads).
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len().max(1);
        &self.servers[i]
    }

    /// Sends `request` (origin-form URI) to the next server and waits for the
    /// response head.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let authority = self.pick().clone();
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() =
            Uri::from_parts(parts).map_err(|e| ProxyError::Internal(e.to_string()))?;
        if self.config.protocol != UpstreamProtocol::Http1 {
            // Over HTTP/2 the target's authority (the server) is sent as
            // `:authority`; a `Host` naming the client's host beside it
            // would be a malformed request to a strict server (RFC 9113
            // §8.3.1). The client's host stays in `X-Forwarded-Host`.
            request.headers_mut().remove(http::header::HOST);
        }

        let timeout = Duration::from_millis(self.config.timeout_ms);
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout {
                upstream: self.name.to_string(),
                timeout_ms: self.config.timeout_ms,
            }),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::UpstreamConnect {
                upstream: self.name.to_string(),
                reason: error_chain(&e),
            }),
            Ok(Err(e)) => Err(ProxyError::Upstream {
                upstream: self.name.to_string(),
                reason: error_chain(&e),
            }),
            Ok(Ok(mut response)) => {
                response.extensions_mut().insert(UpstreamServer(authority));
                Ok(response)
            }
        }
    }
}

/// The content of the group's TLS files (CA, client certificate, key), and
/// its SHA-256.
#[allow(clippy::type_complexity)]
fn read_files(config: &UpstreamConfig) -> Result<([Option<Vec<u8>>; 3], [u8; 32]), String> {
    let mut digest = Sha256::new();
    let mut read = |path: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, String> {
        let Some(path) = path else { return Ok(None) };
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
        Ok(Some(bytes))
    };
    let files = match &config.tls {
        Some(UpstreamTlsConfig { ca, cert, key, .. }) => [read(ca)?, read(cert)?, read(key)?],
        None => [None, None, None],
    };
    Ok((files, digest.finalize().into()))
}

/// The rustls client configuration of a group: the roots its servers must
/// chain to (the configured CA, else the webpki roots), and its client
/// certificate, if any. Plain groups get one that is never used.
fn client_tls(config: &UpstreamConfig) -> Result<(rustls::ClientConfig, [u8; 32]), String> {
    let ([ca, cert, key], digest) = read_files(config)?;
    let provider = crate::crypto::provider();
    let tls = config.tls.as_ref();
    let roots = match ca {
        Some(pem) => {
            let file = tls
                .and_then(|t| t.ca.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            crate::crypto::root_store(&pem, &file)?
        }
        None if config.is_https() => webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect(),
        None => rustls::RootCertStore::empty(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let tls_config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let file = tls
                .and_then(|t| t.cert.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{file}: not a PEM certificate chain: {e}"))?;
            if chain.is_empty() {
                return Err(format!("{file}: no certificate in the file"));
            }
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| format!("the key of {file}: not a PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{file} and its key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok((tls_config, digest))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
