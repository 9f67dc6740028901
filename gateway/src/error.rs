//! Errors on the request path, tagged with where they come from, and the one
//! place where they become HTTP responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, ProxyBody};

/// Where an error comes from; logged with every failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something the gateway cannot serve.
    Client,
    /// The upstream could not be reached or did not answer in time.
    Upstream,
    /// A plugin trapped, ran out of time or memory, or broke the contract.
    Plugin,
    /// A fault in the gateway itself.
    Internal,
}

impl Source {
    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Plugin => "plugin",
            Source::Internal => "internal",
        }
    }
}

/// Why a request could not be served normally.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request's host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// A route matches the path but not the method.
    #[error("method not allowed on this route")]
    MethodNotAllowed {
        /// The methods the matching routes allow, for the `Allow` header.
        allow: String,
    },
    /// The listener serves only redirects to https (`redirect_https`).
    #[error("this listener redirects to https: {location}")]
    HttpsRequired {
        /// The https URL of the same request, for `Location`.
        location: String,
    },
    /// The request body is larger than the route takes.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The route's limit.
        limit: u64,
    },
    /// The request target is longer than `limits.max_uri_bytes`.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong {
        /// The limit.
        limit: usize,
    },
    /// The client's body stopped arriving for the idle timeout.
    #[error("the request body stopped arriving")]
    RequestTimeout,
    /// The route's deadline passed before the response head was ready.
    #[error("the route's deadline of {timeout_ms} ms passed")]
    RouteTimeout {
        /// The route's `timeout_ms`.
        timeout_ms: u64,
    },
    /// The client's body broke its framing or stopped mid-way; whatever
    /// had gone upstream was aborted.
    #[error("bad request body: {0}")]
    ClientBody(String),
    /// The route does not take WebSocket handshakes (`websocket = false`).
    #[error("this route does not carry WebSocket connections")]
    UpgradeRefused,
    /// The request is malformed in a way the gateway cannot forward.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A plugin failed and is configured to fail closed.
    #[error("plugin `{plugin}` failed: {reason}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// What happened (trap, deadline, memory, bad result).
        reason: String,
    },
    /// Every plugin instance slot is in use.
    #[error("plugin `{plugin}` has no free instance")]
    Overloaded {
        /// The plugin.
        plugin: String,
    },
    /// The connection to the chosen upstream server failed or took longer
    /// than `connect_timeout_ms` (there is one attempt, on one server).
    #[error("upstream `{upstream}` is unreachable: {reason}")]
    UpstreamConnect {
        /// The upstream name.
        upstream: String,
        /// The connection error.
        reason: String,
    },
    /// Every server of the group is down (active health checks) or
    /// ejected (passive ones): answered at once, without trying any.
    #[error("upstream `{upstream}` has no healthy server")]
    NoHealthyUpstream {
        /// The upstream name.
        upstream: String,
    },
    /// The upstream did not send a response head in time.
    #[error("upstream `{upstream}` timed out after {timeout_ms} ms")]
    UpstreamTimeout {
        /// The upstream name.
        upstream: String,
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The upstream connection failed after it was made.
    #[error("upstream `{upstream}` failed: {reason}")]
    Upstream {
        /// The upstream name.
        upstream: String,
        /// The protocol or I/O error.
        reason: String,
    },
    /// A fault in the gateway.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Where the error comes from.
    pub fn source_kind(&self) -> Source {
        match self {
            ProxyError::NoRoute
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::HttpsRequired { .. }
            | ProxyError::UpgradeRefused
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::RequestTimeout
            | ProxyError::ClientBody(_)
            | ProxyError::BadRequest(_) => Source::Client,
            ProxyError::Plugin { .. } | ProxyError::Overloaded { .. } => Source::Plugin,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::NoHealthyUpstream { .. }
            | ProxyError::RouteTimeout { .. }
            | ProxyError::Upstream { .. } => Source::Upstream,
            ProxyError::Internal(_) => Source::Internal,
        }
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            // 308, not 301: the method and body are kept (RFC 9110 §15.4.9).
            ProxyError::HttpsRequired { .. } => StatusCode::PERMANENT_REDIRECT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpgradeRefused => StatusCode::FORBIDDEN,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RouteTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Plugin { .. } | ProxyError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Overloaded { .. } | ProxyError::NoHealthyUpstream { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// What the client is told. Plugin and internal details stay in the log:
    /// the client learns that the gateway failed, not how.
    fn public_message(&self) -> String {
        match self {
            ProxyError::Plugin { .. } => {
                "a policy plugin failed while handling this request".into()
            }
            ProxyError::Internal(_) => "internal gateway error".into(),
            ProxyError::ClientBody(_) => "the request body broke its framing or ended early".into(),
            ProxyError::Overloaded { .. } => "the gateway is at capacity, retry later".into(),
            ProxyError::UpstreamConnect { upstream, .. } => {
                format!("upstream `{upstream}` is unreachable")
            }
            ProxyError::Upstream { upstream, .. } => {
                format!("upstream `{upstream}` closed the connection or sent an invalid response")
            }
            other => other.to_string(),
        }
    }

    /// The response for this error: the status and a small JSON body.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = serde_json::json!({
            "status": status.as_u16(),
            "error": status.canonical_reason().unwrap_or("error"),
            "message": self.public_message(),
        })
        .to_string();
        let mut response = Response::new(body::full(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let ProxyError::MethodNotAllowed { allow } = &self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            headers.insert(header::ALLOW, value);
        }
        if let ProxyError::BadRequest(_)
        | ProxyError::ClientBody(_)
        | ProxyError::PayloadTooLarge { .. }
        | ProxyError::UriTooLong { .. }
        | ProxyError::RequestTimeout = &self
        {
            // After a malformed request the rest of the connection cannot
            // be trusted to be framed as the client meant (RFC 9112 §11.2).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::HttpsRequired { location } = &self
            && let Ok(value) = HeaderValue::from_str(location)
        {
            headers.insert(header::LOCATION, value);
        }
        if let ProxyError::Overloaded { .. } = &self {
            // The turns of a busy plugin free up within a call or two.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_source() {
        let timeout = ProxyError::UpstreamTimeout {
            upstream: "b".into(),
            timeout_ms: 5,
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.source_kind(), Source::Upstream);
        let plugin = ProxyError::Plugin {
            plugin: "p".into(),
            reason: "wasm trap: unreachable".into(),
        };
        assert_eq!(plugin.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!plugin.public_message().contains("unreachable"));
    }

    #[test]
    fn an_https_redirect_is_a_308_with_its_location() {
        let response = ProxyError::HttpsRequired {
            location: "https://a.test/x?y".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()[header::LOCATION], "https://a.test/x?y");
    }

    #[test]
    fn overload_is_a_503_to_retry() {
        let response = ProxyError::Overloaded { plugin: "p".into() }.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let response = ProxyError::MethodNotAllowed {
            allow: "GET, POST".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
    }
}
