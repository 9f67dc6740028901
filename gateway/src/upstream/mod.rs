//! Upstream server groups: a pooled HTTP/1.1 keep-alive client per group,
//! round-robin over the group's servers, connect and response timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::ProxyBody;
use crate::config::UpstreamConfig;
use crate::error::ProxyError;

/// One named group of servers.
pub struct Upstream {
    name: Arc<str>,
    config: UpstreamConfig,
    servers: Vec<Authority>,
    next: AtomicUsize,
    client: Client<HttpConnector, ProxyBody>,
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
                s.parse::<Authority>()
                    .map_err(|e| format!("upstream `{name}`: `{s}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_idle_per_server)
            .build(connector);
        Ok(Self {
            name: name.into(),
            config: config.clone(),
            servers,
            next: AtomicUsize::new(0),
            client,
        })
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
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() =
            Uri::from_parts(parts).map_err(|e| ProxyError::Internal(e.to_string()))?;

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
            Ok(Ok(response)) => Ok(response),
        }
    }
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
