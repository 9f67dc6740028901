//! Upstream server groups: a pooled client per group (HTTP/1.1 keep-alive,
//! HTTP/2 over TLS, or h2c) with an idle timeout, TLS to `https://`
//! servers (verified against the webpki roots or a configured CA, SNI,
//! optional client certificate), the choice of a server ([`balance`]),
//! active and passive health checks ([`health`]), connect and response
//! timeouts.

mod balance;
mod connect;
mod health;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};

use crate::alerts::AlertSender;
use crate::body::ProxyBody;
use crate::config::{
    Balance, HashOn, RetryConfig, UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig,
    server_authority,
};
use crate::error::ProxyError;

use balance::Balancer;
use connect::{ConnectedAt, Stamped};
use health::{Outcome, Probe, Servers};

pub use health::ServerHealth;

/// A route's own settings for its upstream group, in place of the group's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteOverrides {
    /// The response-head timeout of each try, ms.
    pub timeout_ms: Option<u64>,
    /// The retry policy.
    pub retries: Option<RetryConfig>,
}

/// What `consistent_hash` may hash besides the request's headers.
#[derive(Debug, Clone, Copy)]
pub struct Affinity<'a> {
    /// The client's address (after trusted proxies).
    pub client_ip: IpAddr,
    /// The consumer an authentication plugin identified.
    pub consumer: Option<&'a str>,
}

/// The server that answered, in the response's extensions (for the
/// access log).
#[derive(Debug, Clone)]
pub struct UpstreamServer(pub Authority);

/// One named group of servers.
pub struct Upstream {
    name: Arc<str>,
    config: UpstreamConfig,
    servers: Arc<Servers>,
    balancer: Balancer,
    budget: Budget,
    scheme: Scheme,
    client: Client<Stamped<HttpsConnector<HttpConnector>>, ProxyBody>,
    /// Connections older than this are not reused.
    lifetime: Option<Duration>,
    /// SHA-256 of the TLS files' content: a reload that changes them
    /// builds a new client even if the config text is the same.
    files_digest: [u8; 32],
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("servers", &self.servers.report())
            .finish()
    }
}

impl Upstream {
    /// Builds the group and starts its active health checks (when there
    /// is a runtime: not for `portcullis check`). Health changes are
    /// raised on `alerts`. `previous`, the group of that name before a
    /// reload that changed its settings, hands over what it knew of the
    /// servers both have (down, ejected). `config` must have passed
    /// validation.
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        alerts: Option<AlertSender>,
        previous: Option<&Upstream>,
    ) -> Result<Self, String> {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                server_authority(&s.address)
                    .parse::<Authority>()
                    .map(|authority| (authority, s.weight))
                    .map_err(|e| format!("upstream `{name}`: `{}`: {e}", s.address))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (tls, files_digest) =
            client_tls(config).map_err(|e| format!("upstream `{name}`: tls: {e}"))?;
        let weights: Vec<u32> = servers.iter().map(|(_, w)| *w).collect();
        let addresses: Vec<&str> = servers.iter().map(|(a, _)| a.as_str()).collect();
        let balancer = Balancer::new(config.balance, &weights, &addresses);
        let group: Arc<str> = name.into();
        let servers = Arc::new(Servers::new(
            group.clone(),
            servers,
            config.outlier.clone(),
            alerts,
        ));
        if let Some(previous) = previous.filter(|p| *p.name == *name) {
            servers.inherit(&previous.servers);
        }
        let fixed_name = match config.tls.as_ref().and_then(|t| t.server_name.as_deref()) {
            Some(server_name) => Some(
                ServerName::try_from(server_name.to_owned())
                    .map_err(|e| format!("upstream `{name}`: tls.server_name: {e}"))?,
            ),
            None => None,
        };
        if let Some(check) = &config.health {
            let probe_tls = config.is_https().then(|| {
                let mut probe_tls = tls.clone();
                probe_tls.alpn_protocols = match config.protocol {
                    UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
                    UpstreamProtocol::H2 | UpstreamProtocol::H2c => vec![b"h2".to_vec()],
                };
                (
                    tokio_rustls::TlsConnector::from(Arc::new(probe_tls)),
                    fixed_name.clone(),
                )
            });
            health::spawn_checks(
                &servers,
                Probe {
                    check: check.clone(),
                    protocol: config.protocol,
                    tls: probe_tls,
                },
            );
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match fixed_name {
            Some(fixed) => builder.with_server_name_resolver(FixedServerNameResolver::new(fixed)),
            None => builder,
        };
        let connector = match config.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
                builder.enable_http2().wrap_connector(http)
            }
        };
        let lifetime = config.connection_lifetime_ms.map(Duration::from_millis);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_server)
            .http2_only(config.protocol != UpstreamProtocol::Http1)
            .build(Stamped::new(connector, lifetime));
        Ok(Self {
            name: group,
            config: config.clone(),
            servers,
            balancer,
            budget: Budget::default(),
            scheme: if config.is_https() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            client,
            lifetime,
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

    /// Every server's health, in config order.
    pub fn health(&self) -> Vec<ServerHealth> {
        self.servers.report()
    }

    /// The `consistent_hash` key of a request (0 for other policies).
    fn key(&self, headers: &HeaderMap, affinity: &Affinity<'_>) -> u64 {
        let ip = || match affinity.client_ip {
            IpAddr::V4(ip) => balance::hash(&ip.octets()),
            IpAddr::V6(ip) => balance::hash(&ip.octets()),
        };
        match &self.config.hash_on {
            None => 0,
            Some(HashOn::ClientIp) => ip(),
            Some(HashOn::Consumer) => affinity
                .consumer
                .map_or_else(ip, |consumer| balance::hash(consumer.as_bytes())),
            Some(HashOn::Header(name)) => headers
                .get(name)
                .map_or_else(ip, |value| balance::hash(value.as_bytes())),
        }
    }

    /// Sends `request` (origin-form URI) to the server the group's policy
    /// chooses and waits for the response head; what comes of it counts
    /// towards that server's passive health. A failure that `retries`
    /// allows is tried again on another server, after a backoff, within
    /// the retry budget (the route's deadline bounds it all). With no
    /// server available the answer is 503 at once.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        affinity: &Affinity<'_>,
        route: &RouteOverrides,
    ) -> Result<Response<Incoming>, ProxyError> {
        let key = self.key(request.headers(), affinity);
        let retries = route.retries.as_ref().unwrap_or(&self.config.retries);
        let timeout_ms = route.timeout_ms.unwrap_or(self.config.timeout_ms);
        if retries.attempts == 0 {
            let index = self.pick(key, None)?;
            return self.send_to(index, request, timeout_ms).await;
        }
        let _counted = self.budget.request();
        // A request without a body, or with a small one read whole first,
        // can be built again; one with a body streamed through has gone
        // with its first try.
        let (replay, request) =
            Replay::of(request, retries.max_body_bytes)
                .await
                .map_err(|reason| ProxyError::Upstream {
                    upstream: self.name.to_string(),
                    reason,
                })?;
        let mut request = Some(request);
        let mut previous = None;
        let mut _retrying = None;
        for attempt in 0.. {
            let index = self.pick(key, previous)?;
            let Some(outgoing) = request
                .take()
                .or_else(|| replay.as_ref().map(Replay::request))
            else {
                return Err(ProxyError::Internal("a retry without its request".into()));
            };
            let result = self.send_to(index, outgoing, timeout_ms).await;
            let Some(replay) = &replay else {
                return result;
            };
            let retry = match &result {
                Err(ProxyError::UpstreamConnect { .. }) => true,
                Err(ProxyError::Upstream { .. }) => retries.on_reset && replay.idempotent(),
                Err(ProxyError::UpstreamTimeout { .. }) => {
                    retries.on_timeout && replay.idempotent()
                }
                Ok(response) => {
                    replay.idempotent() && retries.statuses.contains(&response.status().as_u16())
                }
                Err(_) => false,
            };
            if !retry || attempt >= retries.attempts {
                return result;
            }
            let Some(guard) = self
                .budget
                .retry(retries.budget_percent, retries.budget_min)
            else {
                return result;
            };
            _retrying = Some(guard);
            if let Err(error) = &result {
                tracing::debug!(
                    upstream = &*self.name,
                    attempt = attempt + 1,
                    "retrying: {error}"
                );
            }
            drop(result);
            previous = Some(index);
            let base = retries.backoff_ms.saturating_mul(1 << attempt.min(16));
            if base > 0 {
                let wait = fastrand::u64(base / 2..=base);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
        Err(ProxyError::Internal("retries ran out of numbers".into()))
    }

    /// The server for a request with hash `key`; another than `previous`
    /// when the group has one available.
    fn pick(&self, key: u64, previous: Option<usize>) -> Result<usize, ProxyError> {
        let no_server = || ProxyError::NoHealthyUpstream {
            upstream: self.name.to_string(),
        };
        let index = self
            .balancer
            .pick(&self.servers, key)
            .ok_or_else(no_server)?;
        match previous {
            Some(previous) if index == previous => {
                Ok(self.servers.first_available(previous + 1).unwrap_or(index))
            }
            _ => Ok(index),
        }
    }

    /// One try: `request` to server `index`, waiting `timeout_ms` for the
    /// response head.
    async fn send_to(
        &self,
        index: usize,
        mut request: Request<ProxyBody>,
        timeout_ms: u64,
    ) -> Result<Response<Incoming>, ProxyError> {
        let _in_flight =
            (self.config.balance == Balance::LeastRequest).then(|| self.servers.enter(index));
        let authority = self.servers.get(index).authority.clone();
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

        // With a lifetime, the connection the request goes out on, to
        // retire it after the answer if it is too old.
        let captured = self.lifetime.map(|_| capture_connection(&mut request));
        let timeout = Duration::from_millis(timeout_ms);
        let result = tokio::time::timeout(timeout, self.client.request(request)).await;
        let outcome = match &result {
            Ok(Ok(response)) if !self.servers.failure_status(response.status().as_u16()) => {
                Some(Outcome::Success)
            }
            // The client's body failed (it broke its framing or went away):
            // nothing is learnt of the server, and a client must not be able
            // to eject servers by sending broken bodies.
            Ok(Err(e)) if from_client(e) => None,
            _ => Some(Outcome::Failure),
        };
        if let Some(outcome) = outcome {
            self.servers.record(index, outcome);
        }
        match result {
            Err(_) => Err(ProxyError::UpstreamTimeout {
                upstream: self.name.to_string(),
                timeout_ms,
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
                if let (Some(lifetime), Some(captured)) = (self.lifetime, &captured)
                    && response
                        .extensions()
                        .get::<ConnectedAt>()
                        .is_some_and(|at| at.0.elapsed() >= lifetime)
                    && let Some(connection) = captured.connection_metadata().as_ref()
                {
                    connection.poison();
                }
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

/// A request that can be sent again: its head, and its body if it had one.
#[derive(Debug)]
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// The whole body and its trailers; `None` for a request without one.
    body: Option<(Bytes, Option<HeaderMap>)>,
}

impl Replay {
    /// Keeps what is needed to send `request` again: its head, if it has
    /// no body; its head and its body, read whole, if the body's size is
    /// known and at most `max_body` bytes. Otherwise `None` and the
    /// request as it came. A body that fails while it is read fails the
    /// request (the pipeline tells the client's faults apart).
    async fn of(
        request: Request<ProxyBody>,
        max_body: u64,
    ) -> Result<(Option<Self>, Request<ProxyBody>), String> {
        let head = |request: &Request<ProxyBody>, body| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            body,
        };
        if request.body().is_end_stream() {
            let replay = head(&request, None);
            return Ok((Some(replay), request));
        }
        let small = request
            .body()
            .size_hint()
            .exact()
            .is_some_and(|size| size <= max_body);
        if !small {
            return Ok((None, request));
        }
        let (parts, body) = request.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| format!("reading the request body: {e}"))?;
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        let request = Request::from_parts(parts, crate::body::empty());
        let replay = head(&request, Some((bytes, trailers)));
        let request = replay.request();
        Ok((Some(replay), request))
    }

    /// Whether the method may be repeated (RFC 9110 §9.2.2).
    fn idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }

    /// The request again.
    fn request(&self) -> Request<ProxyBody> {
        let body = match &self.body {
            None => crate::body::empty(),
            Some((bytes, trailers)) => {
                crate::body::full_with_trailers(bytes.clone(), trailers.clone())
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The retry budget of a group: requests in flight, and retries in flight.
#[derive(Debug, Default)]
struct Budget {
    requests: AtomicUsize,
    retries: AtomicUsize,
}

impl Budget {
    /// Counts a request in flight until the guard drops.
    fn request(&self) -> Counted<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Counted(&self.requests)
    }

    /// A retry, if fewer than `percent` of the requests in flight (or
    /// fewer than `min`, whatever the share) are retries now.
    fn retry(&self, percent: u32, min: u32) -> Option<Counted<'_>> {
        let allowed =
            (self.requests.load(Ordering::Relaxed) * percent as usize / 100).max(min as usize);
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |retries| {
                (retries < allowed).then_some(retries + 1)
            })
            .ok()
            .map(|_| Counted(&self.retries))
    }
}

/// One count in a [`Budget`], given back when dropped.
#[derive(Debug)]
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a failed send failed because of the request body the client
/// sent (hyper's "user" errors), not because of the server.
fn from_client(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(error) = source {
        if let Some(hyper_error) = error.downcast_ref::<hyper::Error>()
            && hyper_error.is_user()
        {
            return true;
        }
        source = error.source();
    }
    false
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
