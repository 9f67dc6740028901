//! Outbound HTTP requests: what a plugin uses to ask another service (an
//! identity provider's keys, a token introspection endpoint). Since
//! contract 0.2.3.
//!
//! A plugin may call only the origins its route's gateway config grants it
//! (`[routes.plugins.outbound]`, `allow = ["https://idp.example.com"]`);
//! anything else fails with [`Error::NotAllowed`] before a socket opens.
//! Hosts that resolve to loopback or private addresses are refused unless
//! the config lists them, redirects are not followed unless it allows them,
//! TLS is always verified, and the answer's size and the call's time are
//! capped by the gateway.
//!
//! The call waits for the answer; the gateway serves other requests
//! meanwhile, and the wait does not count against the plugin's CPU
//! deadline. Every call costs a round trip on the request it serves:
//! cache what you fetch (in the instance, or in the [`store`](crate::store)
//! to share it between instances).
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_sdk::http;
//!
//! # fn main() -> Result<(), http::Error> {
//! let answer = http::Request::get("https://idp.example.com/.well-known/jwks.json")
//!     .header("accept", "application/json")
//!     .timeout(Duration::from_secs(2))
//!     .send()?;
//! if answer.status == 200 {
//!     let jwks: serde_json::Value = answer.json().map_err(|e| http::Error::Protocol(e.to_string()))?;
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The absolute `http://` or `https://` URL.
    pub url: String,
    /// Header fields. `host`, `content-length` and the hop-by-hop fields
    /// are set by the gateway and refused here.
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
    /// How long the call may take at most; the grant's `timeout_ms` caps
    /// it, and is the default.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request with `method` to `url`, no headers and no body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header field.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `fields` as `application/x-www-form-urlencoded`
    /// (and the `content-type` to match).
    pub fn form<'a>(self, fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }

    /// Caps the call's time (the grant's `timeout_ms` still applies).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and waits for the answer. (Off `wasm32` there is
    /// no gateway and this panics, like the SDK's other services: keep the
    /// logic in functions that take the fetch as a parameter.)
    pub fn send(self) -> Result<Response, Error> {
        use crate::__private::bindings::portcullis::policy::http as wit;
        let timeout_ms = self
            .timeout
            .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        let request = wit::OutboundRequest {
            method: self.method,
            url: self.url,
            headers: self.headers,
            body: self.body,
            timeout_ms,
        };
        match wit::send(&request) {
            Ok(r) => Ok(Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(e) => Err(Error::from_wit(e)),
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (a redirect the gateway does not follow comes as
    /// it is, with its `location`).
    pub status: u16,
    /// Header fields, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The route's config grants this plugin no outbound calls.
    NotGranted,
    /// The origin (of the URL, or of a redirect) is not in the grant's
    /// allow-list; the origin.
    NotAllowed(String),
    /// The host resolves to a non-public address the grant does not list;
    /// the host.
    PrivateAddress(String),
    /// The request is malformed; why.
    InvalidRequest(String),
    /// No answer in time.
    Timeout,
    /// The answer's body is larger than the grant allows.
    TooLarge,
    /// Resolving, connecting or the TLS handshake failed; why.
    Connect(String),
    /// The exchange failed after connecting, or the answer is not valid
    /// HTTP (or not what the plugin expected); why.
    Protocol(String),
    /// Too many calls of this plugin are in flight.
    Busy,
}

impl Error {
    fn from_wit(e: crate::__private::bindings::portcullis::policy::http::HttpError) -> Self {
        use crate::__private::bindings::portcullis::policy::http::HttpError as W;
        match e {
            W::NotGranted => Error::NotGranted,
            W::NotAllowed(o) => Error::NotAllowed(o),
            W::PrivateAddress(h) => Error::PrivateAddress(h),
            W::InvalidRequest(w) => Error::InvalidRequest(w),
            W::Timeout => Error::Timeout,
            W::TooLarge => Error::TooLarge,
            W::Connect(w) => Error::Connect(w),
            W::Protocol(w) => Error::Protocol(w),
            W::Busy => Error::Busy,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotGranted => f.write_str("the route grants this plugin no outbound calls"),
            Error::NotAllowed(origin) => write!(f, "{origin} is not in the outbound allow-list"),
            Error::PrivateAddress(host) => {
                write!(f, "{host} resolves to a non-public address")
            }
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Error::Timeout => f.write_str("no answer in time"),
            Error::TooLarge => f.write_str("the answer is too large"),
            Error::Connect(why) => write!(f, "cannot connect: {why}"),
            Error::Protocol(why) => write!(f, "the exchange failed: {why}"),
            Error::Busy => f.write_str("too many outbound calls in flight"),
        }
    }
}

impl std::error::Error for Error {}
