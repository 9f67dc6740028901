//! The host side of the contract's `http` interface: a plugin's outbound
//! HTTP calls, under the grant of its route's `[routes.plugins.outbound]`.
//!
//! Every call is checked before a socket opens: the URL's origin must be in
//! the grant's allow-list. A host name is resolved by [`Guard`], which
//! refuses it if any of its addresses is not public (loopback, private,
//! link-local, CGNAT, multicast, reserved...) unless the grant lists the
//! name in `private_hosts`; the connection then goes to the addresses it
//! checked, so a second lookup cannot steer it elsewhere (DNS rebinding).
//! An origin whose host is an IP address was listed as that address, which
//! is its permission. Redirects are followed only up to the grant's
//! `max_redirects`, each hop checked again, with credentials dropped when
//! the origin changes. TLS is verified against the webpki roots or the
//! grant's CA. The body and the whole call's time are capped.
//!
//! Connections are pooled per grant; their tasks run on the engine's
//! plugin threads, which live as long as the gateway.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioTimer;

use super::bindings::portcullis::policy::http::{HttpError, OutboundRequest, OutboundResponse};
use crate::config::{Origin, OutboundConfig};
use crate::metrics::{Metrics, OutboundMetrics};

/// Request headers the gateway sets itself (or that make no sense on one
/// request): a plugin's value for one of them is refused.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The grant of one plugin on one route, with its connection pool.
pub struct Outbound {
    plugin: Arc<str>,
    route: Arc<str>,
    config: OutboundConfig,
    /// The CA bundle's bytes, when `ca` is set: a changed file is a new
    /// grant.
    ca_pem: Option<Vec<u8>>,
    origins: Vec<Origin>,
    client: Client<HttpsConnector<HttpConnector<Guard>>, Full<Bytes>>,
    in_flight: tokio::sync::Semaphore,
    metrics: OutboundMetrics,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("plugin", &self.plugin)
            .field("route", &self.route)
            .field("allow", &self.config.allow)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// The grant `config` of `plugin` on `route`. Connection tasks run on
    /// `engine`'s plugin threads. An error names the CA file's problem.
    pub fn new(
        plugin: Arc<str>,
        route: Arc<str>,
        config: &OutboundConfig,
        metrics: &Metrics,
        engine: &super::PluginEngine,
    ) -> Result<Arc<Self>, String> {
        let threads = engine.plugin_threads().clone();
        let (roots, ca_pem) = match &config.ca {
            None => (None, None),
            Some(file) => {
                let pem = std::fs::read(file)
                    .map_err(|e| format!("ca: cannot read {}: {e}", file.display()))?;
                let roots = crate::crypto::root_store(&pem, &file.display())
                    .map_err(|e| format!("ca: {e}"))?;
                (Some(roots), Some(pem))
            }
        };
        let roots =
            roots.unwrap_or_else(|| webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect());
        let tls = rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let guard = Guard {
            private_hosts: config
                .private_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        };
        let mut http = HttpConnector::new_with_resolver(guard);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms.into())));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(OnRuntime(threads))
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .build(https);
        Ok(Arc::new(Self {
            metrics: metrics.outbound(&plugin, &route),
            plugin,
            route,
            origins: config.origins(),
            config: config.clone(),
            ca_pem,
            client,
            in_flight: tokio::sync::Semaphore::new(config.max_concurrent as usize),
        }))
    }

    /// Whether this grant is `config` (with the CA file's current bytes):
    /// a reload then keeps it, with its connections.
    pub fn same(&self, config: &OutboundConfig) -> bool {
        self.config == *config
            && match &config.ca {
                None => true,
                Some(file) => std::fs::read(file).ok() == self.ca_pem,
            }
    }

    /// Sends a plugin's request: checks it, sends it, follows the redirects
    /// the grant allows, reads the answer; counts and times the call.
    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, HttpError> {
        let Ok(_turn) = self.in_flight.try_acquire() else {
            self.metrics.busy.inc();
            return Err(HttpError::Busy);
        };
        let prepared = match self.prepare(request) {
            Ok(prepared) => prepared,
            Err(e) => {
                self.metrics.refused.inc();
                tracing::debug!(plugin = %self.plugin, route = %self.route, error = %describe(&e), "plugin http call refused");
                return Err(e);
            }
        };
        let start = Instant::now();
        let origin = prepared.origin.to_string();
        let path = prepared.uri.path().to_owned();
        let limit = prepared.timeout;
        let result = match tokio::time::timeout(limit, self.exchange(prepared)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout),
        };
        let elapsed = start.elapsed();
        let counter = match &result {
            Ok(_) => &self.metrics.ok,
            Err(HttpError::NotAllowed(_) | HttpError::PrivateAddress(_)) => &self.metrics.refused,
            Err(HttpError::Timeout) => &self.metrics.timeout,
            Err(HttpError::TooLarge) => &self.metrics.too_large,
            Err(_) => &self.metrics.failed,
        };
        counter.inc();
        self.metrics.duration.observe(elapsed);
        match &result {
            Ok(response) => tracing::debug!(
                plugin = %self.plugin, route = %self.route, %origin, %path,
                status = response.status, bytes = response.body.len(),
                ms = elapsed.as_millis() as u64, "plugin http call"
            ),
            Err(e) => tracing::debug!(
                plugin = %self.plugin, route = %self.route, %origin, %path,
                error = %describe(e), ms = elapsed.as_millis() as u64, "plugin http call failed"
            ),
        }
        result
    }

    /// The request checked and built, before anything is sent.
    fn prepare(&self, request: OutboundRequest) -> Result<Prepared, HttpError> {
        let invalid = |why: String| HttpError::InvalidRequest(why);
        let uri: Uri = request
            .url
            .parse()
            .map_err(|e| invalid(format!("the URL is not valid: {e}")))?;
        let origin = Origin::of(&uri).map_err(invalid)?;
        self.check(&origin)?;
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|_| invalid(format!("`{}` is not a method", printable(&request.method))))?;
        let mut headers = http::HeaderMap::with_capacity(request.headers.len());
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("`{}` is not a header name", printable(name))))?;
            if RESERVED.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "the header `{name}` is set by the gateway"
                )));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                invalid(format!("the value of `{name}` is not a valid header value"))
            })?;
            headers.append(name, value);
        }
        let cap = Duration::from_millis(self.config.timeout_ms.into());
        let timeout = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()).min(cap))
            .unwrap_or(cap);
        Ok(Prepared {
            origin,
            uri,
            method,
            headers,
            body: Bytes::from(request.body),
            timeout,
        })
    }

    /// Whether the grant allows `origin`.
    fn check(&self, origin: &Origin) -> Result<(), HttpError> {
        if self.origins.contains(origin) {
            Ok(())
        } else {
            Err(HttpError::NotAllowed(origin.to_string()))
        }
    }

    /// Sends `request`, following redirects as the grant allows, and reads
    /// the answer.
    async fn exchange(&self, request: Prepared) -> Result<OutboundResponse, HttpError> {
        let Prepared {
            mut origin,
            mut uri,
            mut method,
            mut headers,
            mut body,
            ..
        } = request;
        let mut hops = 0u8;
        loop {
            let mut outgoing = http::Request::new(Full::new(body.clone()));
            *outgoing.method_mut() = method.clone();
            *outgoing.uri_mut() = uri.clone();
            *outgoing.headers_mut() = headers.clone();
            let response = self
                .client
                .request(outgoing)
                .await
                .map_err(|e| connect_error(&e))?;
            let status = response.status();
            if is_redirect(status) && hops < self.config.max_redirects {
                let Some(next) = location(&uri, &response) else {
                    return Err(HttpError::Protocol(format!(
                        "a {status} redirect without a usable location"
                    )));
                };
                let next_origin = Origin::of(&next).map_err(HttpError::NotAllowed)?;
                self.check(&next_origin)?;
                if next_origin != origin {
                    // Credentials were meant for the first origin.
                    headers.remove(http::header::AUTHORIZATION);
                    headers.remove(http::header::COOKIE);
                }
                if status == StatusCode::SEE_OTHER
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST)
                {
                    method = Method::GET;
                    body = Bytes::new();
                    headers.remove(http::header::CONTENT_TYPE);
                }
                (origin, uri) = (next_origin, next);
                hops += 1;
                continue;
            }
            let (parts, incoming) = response.into_parts();
            let max = self.config.max_response_bytes as usize;
            if let Some(length) = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                && length > max as u64
            {
                return Err(HttpError::TooLarge);
            }
            let bytes = Limited::new(incoming, max)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge
                    } else {
                        HttpError::Protocol(format!("reading the answer failed: {e}"))
                    }
                })?
                .to_bytes();
            let headers = parts
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect();
            return Ok(OutboundResponse {
                status: parts.status.as_u16(),
                headers,
                body: bytes.to_vec(),
            });
        }
    }
}

/// A checked request.
struct Prepared {
    origin: Origin,
    uri: Uri,
    method: Method,
    headers: http::HeaderMap,
    body: Bytes,
    timeout: Duration,
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// A redirect's target, resolved against the URL it answered.
fn location<B>(base: &Uri, response: &http::Response<B>) -> Option<Uri> {
    let location = response
        .headers()
        .get(http::header::LOCATION)?
        .to_str()
        .ok()?;
    let base = url::Url::parse(&base.to_string()).ok()?;
    let next = base.join(location).ok()?;
    next.as_str().parse().ok()
}

/// The WIT error for a failed exchange: a refused private address, or the
/// connection's failure.
fn connect_error(e: &hyper_util::client::legacy::Error) -> HttpError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(private) = cause.downcast_ref::<PrivateAddress>() {
            return HttpError::PrivateAddress(private.0.clone());
        }
        source = cause.source();
    }
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_connect() {
        HttpError::Connect(chain)
    } else {
        HttpError::Protocol(chain)
    }
}

/// An error's text for the log.
fn describe(e: &HttpError) -> String {
    match e {
        HttpError::NotGranted => "no outbound grant".into(),
        HttpError::NotAllowed(origin) => format!("origin {origin} not allowed"),
        HttpError::PrivateAddress(host) => format!("{host} resolves to a non-public address"),
        HttpError::InvalidRequest(why) => format!("invalid request: {why}"),
        HttpError::Timeout => "timed out".into(),
        HttpError::TooLarge => "answer too large".into(),
        HttpError::Connect(why) => format!("connect: {why}"),
        HttpError::Protocol(why) => format!("exchange: {why}"),
        HttpError::Busy => "too many calls in flight".into(),
    }
}

/// `text` cut short with non-printable characters replaced, for messages.
fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Resolves host names for a grant's connections, refusing any name with
/// a non-public address unless the grant lists it.
#[derive(Clone)]
struct Guard {
    private_hosts: Arc<[String]>,
}

/// A host name that resolved to a non-public address.
#[derive(Debug)]
struct PrivateAddress(String);

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to a non-public address", self.0)
    }
}

impl StdError for PrivateAddress {}

type Resolving = Pin<
    Box<
        dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, Box<dyn StdError + Send + Sync>>>
            + Send,
    >,
>;

impl tower_service::Service<Name> for Guard {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_ascii_lowercase();
        let private_ok = self.private_hosts.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !private_ok && addrs.iter().any(|a| !is_public(a.ip())) {
                return Err(Box::new(PrivateAddress(host)) as Box<dyn StdError + Send + Sync>);
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Whether `ip` is a public unicast address: not loopback, private,
/// link-local (cloud metadata lives there), shared (CGNAT), unspecified,
/// broadcast, multicast, documentation, benchmarking or reserved, and, for
/// IPv6, not unique-local, link-local, or an IPv4 address in disguise
/// (mapped, compatible, NAT64) that is one of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its low bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_public_v4(Ipv4Addr::from(v6.to_bits() as u32));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                // IPv4-compatible (deprecated, ::/96) and site-local (fec0::/10).
                || s[0..6] == [0, 0, 0, 0, 0, 0]
                || (s[0] & 0xffc0) == 0xfec0
                // Documentation (2001:db8::/32).
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || v6 == Ipv6Addr::UNSPECIFIED)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (CGNAT), 100.64.0.0/10.
        || (a == 100 && (b & 0xc0) == 64)
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b & 0xfe) == 18)
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

/// Spawns the client's connection tasks on the plugin threads.
#[derive(Clone)]
struct OnRuntime(tokio::runtime::Handle);

impl<F> hyper::rt::Executor<F> for OnRuntime
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_not() {
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "100.128.0.1"] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
    }
}
