//! `[[listeners]]`: addresses, and TLS on a listener.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Problem;

/// A listening socket, plain or TLS.
///
/// ```toml
/// [[listeners]]
/// address = "0.0.0.0:8080"
/// redirect_https = true                   # 308 to https://<host>:8443<path>
/// https_port = 8443
///
/// [[listeners]]
/// address = "0.0.0.0:8443"
///
/// [listeners.tls]
/// handshake_timeout_ms = 10000
///
/// [[listeners.tls.certificates]]
/// cert = "certs/api.example.com.pem"      # the chain, leaf first (PEM)
/// key = "certs/api.example.com.key"       # its private key (PEM)
///
/// [[listeners.tls.certificates]]
/// cert = "certs/wildcard.example.org.pem"
/// key = "certs/wildcard.example.org.key"
/// default = true                          # for clients whose SNI matches none
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// Terminate TLS on this listener. Without it the listener speaks
    /// plain HTTP/1.1.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// On a plain listener: answer every request with a 308 redirect to
    /// the same host, path and query over https, on `https_port`.
    #[serde(default)]
    pub redirect_https: bool,
    /// The port the https redirect names (omitted from the URL when 443).
    #[serde(default)]
    pub https_port: Option<u16>,
    /// On a plain listener: also take HTTP/2 with prior knowledge (h2c),
    /// told apart from HTTP/1.1 by the connection preface.
    #[serde(default)]
    pub h2c: bool,
    /// Limits of HTTP/2 connections (ALPN `h2` on TLS, or h2c).
    #[serde(default)]
    pub http2: Http2Config,
    /// Limits of HTTP/1.1 connections.
    #[serde(default)]
    pub http1: Http1Config,
    /// Connections open at once on this listener; past it the listener
    /// stops accepting until one closes (clients wait in the kernel's
    /// backlog). Changes with a restart.
    #[serde(default = "ListenerConfig::default_max_connections")]
    pub max_connections: usize,
}

impl ListenerConfig {
    fn default_max_connections() -> usize {
        10_000
    }
}

/// Limits of HTTP/1.1 connections on a listener.
///
/// ```toml
/// [listeners.http1]
/// max_head_bytes = 65536
/// header_read_timeout_ms = 30000
/// max_headers = 100
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http1Config {
    /// Largest request head (request line and headers) a client may send;
    /// a larger one is answered 431 and the connection closed. Also the
    /// most a connection buffers while reading.
    pub max_head_bytes: usize,
    /// How long a client may take to send a request head, counted from
    /// when the connection is ready for one: so also how long an idle
    /// keep-alive connection is kept. In ms.
    pub header_read_timeout_ms: u64,
    /// Most header fields a request head may have; more are answered 431.
    pub max_headers: usize,
}

impl Http1Config {
    /// hyper's own limit, kept on the stack; any other value costs an
    /// allocation per request.
    pub const DEFAULT_MAX_HEADERS: usize = 100;
}

impl Default for Http1Config {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            header_read_timeout_ms: 30_000,
            max_headers: Http1Config::DEFAULT_MAX_HEADERS,
        }
    }
}

/// Limits of HTTP/2 connections on a listener. The defaults resist the
/// known floods: rapid reset (CVE-2023-44487) by a cap on streams reset
/// before they are served, CONTINUATION floods (CVE-2024-27316 family) by
/// the header list cap, which h2 enforces while headers are still
/// arriving.
///
/// ```toml
/// [listeners.http2]
/// max_concurrent_streams = 128
/// max_header_list_size = 16384
/// initial_stream_window_size = 1048576
/// initial_connection_window_size = 1048576
/// max_pending_accept_reset_streams = 20
/// idle_timeout_ms = 300000
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest header list (decoded, as HTTP/2 counts it) a client may
    /// send; larger requests are refused before a plugin runs.
    pub max_header_list_size: u32,
    /// Flow-control window of each stream: request body bytes a client may
    /// send ahead of the gateway reading them.
    pub initial_stream_window_size: u32,
    /// Flow-control window of the whole connection.
    pub initial_connection_window_size: u32,
    /// Streams a client may open and reset before the gateway accepted
    /// them; past it the connection is closed with `ENHANCE_YOUR_CALM`.
    pub max_pending_accept_reset_streams: usize,
    /// How long a connection may stay open with no stream in flight
    /// before the gateway closes it with GOAWAY (streams still open then
    /// finish first). In ms.
    pub idle_timeout_ms: u64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            initial_stream_window_size: 1024 * 1024,
            initial_connection_window_size: 1024 * 1024,
            max_pending_accept_reset_streams: 20,
            idle_timeout_ms: 300_000,
        }
    }
}

impl ListenerConfig {
    /// The https port to redirect to, if this listener redirects.
    pub fn https_redirect(&self) -> Option<u16> {
        self.redirect_https.then(|| self.https_port.unwrap_or(443))
    }
}

/// TLS on a listener: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificates served, chosen by the client's SNI against each
    /// certificate's DNS names (exact, then wildcard).
    pub certificates: Vec<CertificateConfig>,
    /// How long a client may take to complete the handshake, in ms.
    #[serde(default = "TlsConfig::default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// Mutual TLS: ask clients for a certificate and verify it.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
}

impl TlsConfig {
    /// The files it reads: certificates, keys, the client CA.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.certificates
            .iter()
            .flat_map(|c| [c.cert.as_path(), c.key.as_path()])
            .chain(self.client_auth.iter().map(|a| a.ca.as_path()))
    }
}

/// Mutual TLS on a listener.
///
/// ```toml
/// [listeners.tls.client_auth]
/// ca = "certs/clients-ca.pem"     # the CAs client certificates must chain to
/// mode = "required"               # or "optional"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM file with the CA certificates that client certificates must
    /// chain to. Relative to the config file.
    pub ca: PathBuf,
    /// Whether a client without a certificate is refused at the handshake.
    #[serde(default)]
    pub mode: ClientAuthMode,
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// A client without a valid certificate fails the handshake.
    #[default]
    Required,
    /// A client may send no certificate (plugins such as `mtls_auth` then
    /// decide per route); one that sends a certificate that does not
    /// verify still fails the handshake.
    Optional,
}

impl TlsConfig {
    /// Makes the certificate, key and CA paths relative to the config file.
    pub(super) fn resolve_paths(&mut self, resolve: &impl Fn(&mut PathBuf)) {
        for c in &mut self.certificates {
            resolve(&mut c.cert);
            resolve(&mut c.key);
        }
        if let Some(auth) = self.client_auth.as_mut() {
            resolve(&mut auth.ca);
        }
    }

    fn default_handshake_timeout() -> u64 {
        10_000
    }
}

/// One certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate chain, leaf first. Relative to the
    /// config file.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Relative
    /// to the config file.
    pub key: PathBuf,
    /// Served when the client sends no SNI or one that no certificate
    /// names. At most one per listener; default: the first certificate.
    #[serde(default)]
    pub default: bool,
}

impl ListenerConfig {
    pub(super) fn resolve_paths(&mut self, resolve: &impl Fn(&mut PathBuf)) {
        if let Some(tls) = self.tls.as_mut() {
            tls.resolve_paths(resolve);
        }
    }

    /// The certificate, key and CA files this listener reads.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.tls.iter().flat_map(TlsConfig::files)
    }
}

pub(super) fn validate(listeners: &[ListenerConfig], problems: &mut Vec<Problem>) {
    let mut bad = |key: String, message: String| problems.push(Problem { key, message });
    if listeners.is_empty() {
        bad(
            "listeners".into(),
            "at least one listener is required, e.g. [[listeners]] address = \"127.0.0.1:8080\""
                .into(),
        );
    }
    let mut addresses = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.address.port() != 0 && !addresses.insert(l.address) {
            bad(
                format!("listeners[{i}].address"),
                format!("{} is used by another listener", l.address),
            );
        }
        if l.redirect_https && l.tls.is_some() {
            bad(
                format!("listeners[{i}].redirect_https"),
                "a TLS listener cannot redirect to https; set it on a plain listener".into(),
            );
        }
        if l.https_port.is_some() && !l.redirect_https {
            bad(
                format!("listeners[{i}].https_port"),
                "only meaningful with `redirect_https = true`".into(),
            );
        }
        if l.https_port == Some(0) {
            bad(
                format!("listeners[{i}].https_port"),
                "must be a port between 1 and 65535".into(),
            );
        }
        if l.h2c && l.tls.is_some() {
            bad(
                format!("listeners[{i}].h2c"),
                "h2c is HTTP/2 in clear text; a TLS listener speaks HTTP/2 by ALPN already".into(),
            );
        }
        let h2 = &l.http2;
        let mut range = |field: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                bad(
                    format!("listeners[{i}].http2.{field}"),
                    format!("must be between {min} and {max}, got {value}"),
                );
            }
        };
        range(
            "max_concurrent_streams",
            h2.max_concurrent_streams.into(),
            1,
            10_000,
        );
        range(
            "max_header_list_size",
            h2.max_header_list_size.into(),
            1024,
            1024 * 1024,
        );
        // RFC 9113 §6.9.2: windows run from 65535 to 2^31-1.
        range(
            "initial_stream_window_size",
            h2.initial_stream_window_size.into(),
            65_535,
            (1 << 31) - 1,
        );
        range(
            "initial_connection_window_size",
            h2.initial_connection_window_size.into(),
            65_535,
            (1 << 31) - 1,
        );
        range(
            "max_pending_accept_reset_streams",
            h2.max_pending_accept_reset_streams as u64,
            1,
            10_000,
        );
        range("idle_timeout_ms", h2.idle_timeout_ms, 100, 86_400_000);
        if !(100..=3_600_000).contains(&l.http1.header_read_timeout_ms) {
            bad(
                format!("listeners[{i}].http1.header_read_timeout_ms"),
                format!(
                    "must be between 100 and 3600000, got {}",
                    l.http1.header_read_timeout_ms
                ),
            );
        }
        if !(1..=10_000).contains(&l.http1.max_headers) {
            bad(
                format!("listeners[{i}].http1.max_headers"),
                format!("must be between 1 and 10000, got {}", l.http1.max_headers),
            );
        }
        if !(1..=1_000_000).contains(&l.max_connections) {
            bad(
                format!("listeners[{i}].max_connections"),
                format!("must be between 1 and 1000000, got {}", l.max_connections),
            );
        }
        if !(8192..=1024 * 1024).contains(&l.http1.max_head_bytes) {
            bad(
                format!("listeners[{i}].http1.max_head_bytes"),
                format!(
                    "must be between 8192 and 1048576, got {}",
                    l.http1.max_head_bytes
                ),
            );
        }
        if let Some(tls) = &l.tls {
            tls.validate(&format!("listeners[{i}].tls"), "listeners.tls", &mut bad);
        }
    }
}

impl TlsConfig {
    /// Reports what is wrong with these TLS settings, keys under `at`
    /// (`listeners[0].tls`), the TOML table being `table`
    /// (`listeners.tls`).
    pub(super) fn validate(&self, at: &str, table: &str, bad: &mut impl FnMut(String, String)) {
        if self.certificates.is_empty() {
            bad(
                format!("{at}.certificates"),
                format!(
                    "at least one certificate is required: [[{table}.certificates]] cert = \"...\" key = \"...\""
                ),
            );
        }
        if self.certificates.iter().filter(|c| c.default).count() > 1 {
            bad(
                format!("{at}.certificates"),
                "at most one certificate can be `default = true`".into(),
            );
        }
        if !(100..=300_000).contains(&self.handshake_timeout_ms) {
            bad(
                format!("{at}.handshake_timeout_ms"),
                format!(
                    "must be between 100 and 300000, got {}",
                    self.handshake_timeout_ms
                ),
            );
        }
    }
}
