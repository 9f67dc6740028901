//! The access-log record: one line per request, written when the
//! response head is ready.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};

use crate::error::ProxyError;
use crate::forward::Connection;
use crate::registry::ChainLink;

/// What the access log says about a request.
#[derive(Default)]
pub(crate) struct Record {
    /// The client's address, when it is not the peer's (trusted proxies).
    pub(crate) client: Option<IpAddr>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) decisions: Vec<String>,
    pub(crate) consumer: Option<String>,
    pub(crate) error: Option<String>,
}

impl Record {
    pub(crate) fn decide(&mut self, link: &ChainLink, what: impl std::fmt::Display) {
        self.decisions.push(format!("{}:{what}", link.plugin));
    }

    pub(crate) fn fail(&mut self, error: &ProxyError) {
        self.error = Some(format!("{}: {error}", error.source_kind().as_str()));
    }

    pub(crate) fn log(
        &self,
        method: &Method,
        path: &str,
        conn: &Connection,
        status: StatusCode,
        started: Instant,
    ) {
        let tls = conn.tls.as_ref();
        tracing::info!(
            target: "portcullis::access",
            route = self.route.as_deref().unwrap_or("-"),
            method = %method,
            path,
            status = status.as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            client = %self.client.unwrap_or(conn.peer.ip()),
            tls = tls.map_or("-", |t| t.version),
            sni = tls.and_then(|t| t.server_name.as_deref()).unwrap_or("-"),
            consumer = self.consumer.as_deref().unwrap_or("-"),
            plugins = %self.decisions.join(" "),
            error = self.error.as_deref().unwrap_or(""),
        );
    }
}
