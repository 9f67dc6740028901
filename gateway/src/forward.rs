//! Forwarding: what crosses the gateway between the client's request and
//! the upstream's, and back. The host a request is for (and the RFC 9112
//! rules on `Host`), hop-by-hop headers, `X-Forwarded-*` and the client
//! address behind trusted proxies, the request as it goes upstream, the
//! https redirect, upstream responses framed two ways, and WebSocket
//! upgrades spliced into a tunnel. The pipeline decides when; this module
//! knows how.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::ProxyBody;
use crate::config::ForwardedHeaders;
use crate::error::ProxyError;
use crate::plugin::ClientCertificate;

/// The client connection a request came on.
#[derive(Debug)]
pub struct Connection {
    /// The index of the listener in the config.
    pub listener: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// The TLS session, on a TLS listener.
    pub tls: Option<TlsSession>,
    /// One of the listener's `max_connections` slots, given back when the
    /// last user of the connection (the HTTP connection, or the tunnel of
    /// an upgrade that outlives it) drops it.
    pub slot: Option<OwnedSemaphorePermit>,
}

/// What the TLS handshake settled.
#[derive(Debug, Clone)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The SNI the client sent.
    pub server_name: Option<Box<str>>,
    /// The certificate the client presented, verified (mutual TLS).
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

/// The client's upgrade, if `request` is an HTTP/1.1 WebSocket handshake
/// (RFC 6455 §4.1: GET, `Connection: upgrade`, `Upgrade: websocket`).
pub(crate) fn websocket_upgrade(request: &mut Request<Incoming>) -> Option<OnUpgrade> {
    let headers = request.headers();
    let asks = request.version() == Version::HTTP_11
        && request.method() == Method::GET
        && has_token(headers, &header::CONNECTION, "upgrade")
        && has_token(headers, &header::UPGRADE, "websocket");
    if asks {
        request.extensions_mut().remove::<OnUpgrade>()
    } else {
        None
    }
}

/// Carries an upgraded connection's bytes both ways until either side
/// closes, or until no byte has moved either way for `idle`. Holds `conn`,
/// so the tunnel keeps its listener's connection slot.
pub(crate) async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    conn: Arc<Connection>,
    route: Arc<str>,
) {
    let peer = conn.peer;
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(client = %peer, %route, "upgrade failed: {e}");
            return;
        }
    };
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Active::new(TokioIo::new(client), &last, started);
    let mut upstream = Active::new(TokioIo::new(upstream), &last, started);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            done = &mut copy => {
                match done {
                    Ok((up, down)) => tracing::debug!(
                        client = %peer, %route, bytes_up = up, bytes_down = down,
                        "upgraded connection closed"
                    ),
                    Err(e) => tracing::debug!(client = %peer, %route, "upgraded connection failed: {e}"),
                }
                return;
            }
            _ = tokio::time::sleep_until((quiet_since + idle).into()) => {
                let moved = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if moved == quiet_since {
                    tracing::debug!(client = %peer, %route, "upgraded connection idle for {idle:?}: closed");
                    return;
                }
            }
        }
    }
}

/// A stream that notes when bytes last moved through it (ms since
/// `started`), for the idle timeout of a tunnel.
pub(crate) struct Active<S> {
    inner: S,
    last: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Active<S> {
    fn new(inner: S, last: &Arc<AtomicU64>, started: Instant) -> Self {
        Self {
            inner,
            last: last.clone(),
            started,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why an upstream response head could be read two ways (RFC 9112 §6.3),
/// if it could: such a response is not passed on.
pub(crate) fn ambiguous_framing(headers: &HeaderMap) -> Option<&'static str> {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next()?;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Some("both Content-Length and Transfer-Encoding");
    }
    let valid = |v: &HeaderValue| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
    if !valid(first) {
        return Some("an invalid Content-Length");
    }
    for other in lengths {
        if !valid(other) {
            return Some("an invalid Content-Length");
        }
        if other != first {
            return Some("differing Content-Length values");
        }
    }
    None
}

/// Whether a comma-separated header (`Connection`, `Upgrade`, `TE`) lists
/// `token`, case-insensitively, in any of its lines.
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The host the request is for: the authority of its target (HTTP/2's
/// `:authority`, or an absolute-form HTTP/1.1 target, which RFC 9112
/// §3.2.2 puts before `Host`), else its `Host` header. Refused with 400,
/// as RFC 9112 §3.2 says a server MUST: an HTTP/1.1 request without a
/// host, more than one `Host`, a `Host` that is not a `host[:port]`. And a
/// `Host` naming another authority than the target (RFC 9113 §8.3.1): the
/// gateway would route on one and the upstream see the other.
pub(crate) fn host_of<B>(request: &Request<B>) -> Result<Option<String>, ProxyError> {
    let bad = |why: &str| Err(ProxyError::BadRequest(why.to_owned()));
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    let host = match host {
        None => None,
        Some(value) => match value.to_str().ok().filter(|h| is_authority(h)) {
            Some(host) => Some(host),
            None => return bad("the Host header is not a host[:port]"),
        },
    };
    match (request.uri().authority(), host) {
        (Some(authority), _) if !is_authority(authority.as_str()) => {
            bad("the request target's authority is not a host[:port]")
        }
        (Some(authority), Some(host)) if !host.eq_ignore_ascii_case(authority.as_str()) => {
            bad("the Host header and the request target name different hosts")
        }
        (Some(authority), _) => Ok(Some(authority.as_str().to_owned())),
        (None, Some(host)) => Ok(Some(host.to_owned())),
        (None, None) if request.version() == Version::HTTP_11 => bad("a Host header is required"),
        (None, None) => Ok(None),
    }
}

/// Whether `text` is a `host[:port]` (RFC 9110 §7.2), without userinfo.
pub(crate) fn is_authority(text: &str) -> bool {
    !text.is_empty()
        && !text.contains('@')
        && text
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.as_str() == text)
}

// Header names the request path uses, built at compile time: a name given
// as `&str` is parsed and checked on every use, some 1,100 instructions
// each for these (a third of what building the upstream request cost).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// How many headers concern one connection, not the message (RFC 9110
/// §7.6.1): [`HOP_BY_HOP`], `Connection` first ([`strip_hop_by_hop`]
/// relies on it).
pub(crate) const HOP_BY_HOP_LEN: usize = 8;
/// The hop-by-hop headers themselves.
pub(crate) static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_LEN] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
/// `Transfer-Encoding` is left to hyper, which frames each side itself.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which of the eight are there; only
    // those are removed. A hashed remove of each of the eight, most of
    // them absent, was some 6% of a plain request's instructions. Headers
    // that `Connection` names are hop-by-hop only when it is there.
    let mut present = [false; HOP_BY_HOP_LEN];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        // What `Connection` lists is mostly `keep-alive` or `close`: the
        // first is removed below with the other hop-by-hop headers, the
        // second is an option, not a header. Only other names are parsed
        // and removed here (the Vec allocates only for them). Parsing
        // every token into a Vec cost some 750 instructions on each
        // upstream response that says `Connection: keep-alive`.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                let known = token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || HOP_BY_HOP
                        .iter()
                        .any(|h| token.eq_ignore_ascii_case(h.as_str()));
                if !known && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
}

/// The request as it goes upstream: origin-form URI, HTTP/1.1 with a
/// `Host` (the client's, as plugins left it, or HTTP/2's `:authority`
/// when there is none, RFC 9113 §8.3.1) and one `Cookie` line (§8.2.3), hop-by-hop headers
/// removed, `X-Forwarded-*` or RFC 7239 `Forwarded` (or both) set.
pub(crate) fn upstream_request(
    mut head: http::request::Parts,
    body: ProxyBody,
    conn: &Connection,
    original_host: Option<&str>,
    via_trusted_proxy: bool,
    style: ForwardedHeaders,
) -> Request<ProxyBody> {
    // `TE: trailers` says the client takes trailers; gRPC servers require
    // it. The only TE value that crosses a hop (as HTTP/2 allows).
    let trailers = has_token(&head.headers, &header::TE, "trailers");
    strip_hop_by_hop(&mut head.headers);
    head.headers.remove(header::TRANSFER_ENCODING);
    if trailers {
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !head.headers.contains_key(header::HOST)
        && let Some(value) = original_host.and_then(|h| HeaderValue::from_str(h).ok())
    {
        head.headers.insert(header::HOST, value);
    }
    if head.version == Version::HTTP_2 {
        join_cookies(&mut head.headers);
    }
    let proto = if conn.tls.is_some() { "https" } else { "http" };
    if style == ForwardedHeaders::Forwarded {
        if !via_trusted_proxy {
            for name in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST] {
                head.headers.remove(name);
            }
        }
    } else {
        set_x_forwarded(
            &mut head.headers,
            conn,
            proto,
            original_host,
            via_trusted_proxy,
        );
    }
    if !via_trusted_proxy {
        // What an untrusted client says about itself in these is a lie
        // an upstream might believe.
        head.headers.remove(header::FORWARDED);
        head.headers.remove(X_REAL_IP);
    }
    if style != ForwardedHeaders::XForwarded {
        append_forwarded(&mut head.headers, conn.peer.ip(), proto, original_host);
    }
    if let Some(pq) = head.uri.path_and_query().cloned() {
        head.uri = Uri::from(pq);
    }
    head.version = Version::HTTP_11;
    Request::from_parts(head, body)
}

/// Appends this hop to `X-Forwarded-For`, and sets `X-Forwarded-Proto` and
/// `-Host` to what this hop saw unless a trusted proxy sent them.
fn set_x_forwarded(
    headers: &mut HeaderMap,
    conn: &Connection,
    proto: &'static str,
    original_host: Option<&str>,
    via_trusted_proxy: bool,
) {
    let mut forwarded_for = String::new();
    if let Some(earlier) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        forwarded_for.push_str(earlier);
        forwarded_for.push_str(", ");
    }
    crate::ipfmt::push(&mut forwarded_for, conn.peer.ip());
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    // A trusted proxy's `X-Forwarded-Proto` stands (it may have terminated
    // TLS); anyone else's is replaced by what the client really used.
    let forwarded_proto = headers
        .get(&X_FORWARDED_PROTO)
        .filter(|v| *v == "https" || *v == "http");
    if !(via_trusted_proxy && forwarded_proto.is_some()) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    let kept_host = via_trusted_proxy && headers.contains_key(&X_FORWARDED_HOST);
    if !kept_host && let Some(value) = original_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST, value);
    }
}

/// Appends this hop's element to `Forwarded` (RFC 7239 §4): `for` the
/// client (an IPv6 address bracketed and quoted, §6), `proto`, and `host`
/// (quoted when it is not a token, as with a port).
fn append_forwarded(
    headers: &mut HeaderMap,
    client: std::net::IpAddr,
    proto: &str,
    host: Option<&str>,
) {
    let mut element = String::from("for=");
    if client.is_ipv6() {
        element.push_str("\"[");
        crate::ipfmt::push(&mut element, client);
        element.push_str("]\"");
    } else {
        crate::ipfmt::push(&mut element, client);
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = host {
        let token = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token {
            element.push_str(";host=");
            element.push_str(host);
        } else {
            element.push_str(";host=\"");
            for c in host.chars() {
                if c == '"' || c == '\\' {
                    element.push('\\');
                }
                element.push(c);
            }
            element.push('"');
        }
    }
    let earlier: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if earlier.is_empty() {
        element
    } else {
        format!("{}, {element}", earlier.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(header::FORWARDED, value);
    }
}

/// The redirect of a request to the same host, path and query over https
/// on `port`.
pub(crate) fn https_redirect<B>(request: &Request<B>, host: Option<&str>, port: u16) -> ProxyError {
    let authority = host.and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(authority) = authority.filter(|a| !a.as_str().contains('@')) else {
        return ProxyError::BadRequest("a Host header is required".into());
    };
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", PathAndQuery::as_str);
    let location = if port == 443 {
        format!("https://{}{target}", authority.host())
    } else {
        format!("https://{}:{port}{target}", authority.host())
    };
    ProxyError::HttpsRequired { location }
}

/// The client's address and whether the request came through a trusted
/// proxy. From a trusted proxy, the client is the rightmost address of
/// `X-Forwarded-For` that is not itself a trusted proxy (an entry that is
/// not an address ends the walk at the last good one); from anyone else,
/// the peer, whatever the headers say.
pub(crate) fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> (IpAddr, bool) {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return (peer, false);
    }
    let mut client = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','));
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    (client, true)
}

/// HTTP/2 may split `Cookie` into one field per cookie; HTTP/1.1 wants one
/// line, joined with `; ` (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for more in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // Names in any case, over several Connection lines; `close` is an
        // option (a header of that name is not removed for it).
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static(" X-One ,TE"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("close", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("close"));
    }

    #[test]
    fn forwarded_headers_are_set_and_appended() {
        let mut req = Request::builder()
            .uri("http://api.example.com/a?b=1")
            .header("x-forwarded-for", "10.0.0.1")
            .header("forwarded", "for=1.2.3.4")
            .header("x-real-ip", "1.2.3.4")
            .body(())
            .expect("request");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("api.example.com"));
        let (head, ()) = req.into_parts();
        let conn = Connection {
            listener: 0,
            peer: "192.0.2.7:5000".parse().expect("addr"),
            tls: None,
            slot: None,
        };
        let out = upstream_request(
            head,
            body::empty(),
            &conn,
            Some("api.example.com"),
            false,
            ForwardedHeaders::XForwarded,
        );
        assert_eq!(out.uri(), "/a?b=1");
        assert!(!out.headers().contains_key(header::FORWARDED));
        assert!(!out.headers().contains_key("x-real-ip"));
        assert_eq!(out.headers()["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out.headers()["x-forwarded-proto"], "http");
        assert_eq!(out.headers()["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn rfc7239_forwarded_is_appended_and_untrusted_x_forwarded_removed() {
        let request = |forwarded: &str| {
            Request::builder()
                .uri("/a")
                .header(header::HOST, "api.example.com:8443")
                .header("forwarded", forwarded)
                .header("x-forwarded-for", "1.2.3.4")
                .header("x-forwarded-proto", "https")
                .body(())
                .expect("request")
                .into_parts()
                .0
        };
        let conn = |peer: &str| Connection {
            listener: 0,
            peer: peer.parse().expect("addr"),
            tls: None,
            slot: None,
        };
        let host = Some("api.example.com:8443");
        // From an untrusted peer: its claims go, this hop's element is the
        // only one.
        let out = upstream_request(
            request("for=6.6.6.6"),
            body::empty(),
            &conn("192.0.2.7:5000"),
            host,
            false,
            ForwardedHeaders::Forwarded,
        );
        assert_eq!(
            out.headers()[header::FORWARDED],
            "for=192.0.2.7;proto=http;host=\"api.example.com:8443\""
        );
        assert!(!out.headers().contains_key("x-forwarded-for"));
        assert!(!out.headers().contains_key("x-forwarded-proto"));
        // From a trusted proxy over IPv6: appended to what it sent, the
        // address bracketed and quoted; with `both`, X-Forwarded-* too.
        let out = upstream_request(
            request("for=198.51.100.17;proto=https"),
            body::empty(),
            &conn("[2001:db8::1]:5000"),
            Some("api.example.com"),
            true,
            ForwardedHeaders::Both,
        );
        assert_eq!(
            out.headers()[header::FORWARDED],
            "for=198.51.100.17;proto=https, for=\"[2001:db8::1]\";proto=http;host=api.example.com"
        );
        assert_eq!(out.headers()["x-forwarded-for"], "1.2.3.4, 2001:db8::1");
        assert_eq!(out.headers()["x-forwarded-proto"], "https");
    }

    #[test]
    fn an_http2_request_goes_up_as_http1_with_host_and_one_cookie_line() {
        let (head, ()) = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://api.example.com/a")
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .body(())
            .expect("request")
            .into_parts();
        let conn = Connection {
            listener: 0,
            peer: "192.0.2.7:5000".parse().expect("addr"),
            tls: Some(TlsSession {
                version: "TLSv1.3",
                server_name: Some("api.example.com".into()),
                client_certificate: None,
            }),
            slot: None,
        };
        let out = upstream_request(
            head,
            body::empty(),
            &conn,
            Some("api.example.com"),
            false,
            ForwardedHeaders::XForwarded,
        );
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.uri(), "/a");
        assert_eq!(out.headers()[header::HOST], "api.example.com");
        assert_eq!(out.headers()[header::COOKIE], "a=1; b=2");
        assert_eq!(out.headers()["x-forwarded-proto"], "https");
    }

    #[test]
    fn the_client_is_found_behind_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = ["10.0.0.0/8", "192.0.2.1"]
            .iter()
            .filter_map(|p| crate::config::parse_network(p))
            .collect();
        let headers = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let xff = headers(&["1.1.1.1, 203.0.113.9", "10.1.1.1"]);
        // From an untrusted peer the headers are not believed.
        assert_eq!(
            client_address(ip("198.51.100.5"), &xff, &trusted),
            (ip("198.51.100.5"), false)
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &[]),
            (ip("10.0.0.2"), false)
        );
        // From a trusted one: the rightmost untrusted hop, not the leftmost
        // (which the client wrote).
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            (ip("203.0.113.9"), true)
        );
        assert_eq!(
            client_address(ip("192.0.2.1"), &headers(&[]), &trusted),
            (ip("192.0.2.1"), true)
        );
        // Garbage ends the walk at the last address known.
        let junk = headers(&["1.1.1.1, junk, 10.2.2.2"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &junk, &trusted),
            (ip("10.2.2.2"), true)
        );
    }

    #[test]
    fn the_https_redirect_keeps_host_path_and_query_and_drops_the_port() {
        let request = Request::get("/a/b?c=1").body(()).expect("request");
        let location = |host: Option<&str>, port| match https_redirect(&request, host, port) {
            ProxyError::HttpsRequired { location } => Ok(location),
            other => Err(other.to_string()),
        };
        assert_eq!(
            location(Some("api.test:8080"), 443),
            Ok("https://api.test/a/b?c=1".into())
        );
        assert_eq!(
            location(Some("[::1]:8080"), 8443),
            Ok("https://[::1]:8443/a/b?c=1".into())
        );
        assert!(location(None, 443).is_err());
        assert!(location(Some("user@evil.test"), 443).is_err());
        assert!(location(Some("a.test/x"), 443).is_err());
    }

    #[test]
    fn the_target_authority_wins_and_a_different_host_is_refused() {
        let request = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(host) = host {
                b = b.header(header::HOST, host);
            }
            b.body(()).expect("request")
        };
        let host = |r: &Request<()>| host_of(r).map_err(|e| e.to_string());
        assert_eq!(
            host(&request("/a", Some("a.test"))),
            Ok(Some("a.test".into()))
        );
        assert!(host(&request("/a", None)).is_err(), "HTTP/1.1 needs a host");
        assert_eq!(
            host(&request("http://b.test/a", None)),
            Ok(Some("b.test".into()))
        );
        assert_eq!(
            host(&request("http://b.test/a", Some("B.test"))),
            Ok(Some("b.test".into()))
        );
        assert!(host(&request("http://b.test/a", Some("a.test"))).is_err());
        assert!(host(&request("/a", Some("user@a.test"))).is_err());
        assert!(host(&request("/a", Some("a.test/x"))).is_err());
        assert!(host(&request("/a", Some(""))).is_err());
        assert_eq!(
            host(&request("/a", Some("[::1]:8080"))),
            Ok(Some("[::1]:8080".into()))
        );
        let two = Request::builder()
            .uri("/")
            .header(header::HOST, "a.test")
            .header(header::HOST, "a.test")
            .body(())
            .expect("request");
        assert!(host(&two).is_err());
        let http10 = Request::builder()
            .version(Version::HTTP_10)
            .uri("/")
            .body(())
            .expect("request");
        assert_eq!(host(&http10), Ok(None));
    }
}
