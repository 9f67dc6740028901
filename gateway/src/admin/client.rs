//! The admin API from the command line: what `portcullis rollout` sends
//! to a running gateway, found through its config (`[admin]`: address,
//! token, TLS).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;

use crate::config::Config;

/// How long a call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the admin API of a running gateway is, and how to call it.
#[derive(Debug)]
pub struct AdminTarget {
    /// `http://host:port` or `https://host:port`.
    pub base: String,
    token: Option<String>,
    roots: Option<rustls::RootCertStore>,
}

impl AdminTarget {
    /// The admin API of the gateway `config` describes (its `[admin]`
    /// address; a wildcard address is called on loopback). `ca` is the
    /// CA bundle the admin listener's certificate is checked against
    /// (default: the webpki roots).
    pub fn from_config(config: &Path, ca: Option<&Path>) -> Result<Self, String> {
        let config = Config::load(config).map_err(|e| e.to_string())?;
        let admin = config.admin.as_ref().ok_or_else(|| {
            "the config has no [admin] section: the gateway has no admin API to call".to_owned()
        })?;
        let mut address = admin.address;
        if address.ip().is_unspecified() {
            address.set_ip(if address.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let scheme = if admin.tls.is_some() { "https" } else { "http" };
        let roots = match ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                Some(crate::crypto::root_store(&pem, &ca.display())?)
            }
            None => None,
        };
        Ok(Self {
            base: format!("{scheme}://{address}"),
            token: std::env::var("PORTCULLIS_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| admin.token.clone()),
            roots,
        })
    }

    /// Calls `method path`; the JSON answer, or the error the API gave.
    pub async fn call(&self, method: Method, path: &str) -> Result<Value, String> {
        let client = crate::crypto::outbound_client(self.roots.clone(), TIMEOUT)?;
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{url}: {e}"))?;
        let response = tokio::time::timeout(TIMEOUT, client.request(request))
            .await
            .map_err(|_| format!("{url}: no answer within {} s", TIMEOUT.as_secs()))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == StatusCode::OK {
            return Ok(json);
        }
        let why = json["error"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).into_owned(),
            str::to_owned,
        );
        Err(format!("{url}: {status}: {why}"))
    }
}

/// One line about a rollout as `/rollouts` shows it.
pub fn describe_rollout(rollout: &Value) -> String {
    let counts = |arm: &Value| {
        format!(
            "{} requests, {} failed, {} refused, {} of {} upstream answers 5xx",
            arm["requests"], arm["failures"], arm["refusals"], arm["errors_5xx"], arm["responses"]
        )
    };
    let mut line = format!(
        "{}/{}: candidate {} {}, {}% of requests (step {} of {}); candidate: {}; stable: {}",
        rollout["route"].as_str().unwrap_or("?"),
        rollout["plugin"].as_str().unwrap_or("?"),
        rollout["module"].as_str().unwrap_or("?"),
        rollout["phase"].as_str().unwrap_or("?"),
        rollout["percent"].as_f64().unwrap_or(0.0),
        rollout["step"],
        rollout["steps"].as_array().map_or(0, Vec::len),
        counts(&rollout["candidate"]),
        counts(&rollout["stable"]),
    );
    if let Some(reason) = rollout["reason"].as_str() {
        line.push_str(&format!("; {reason}"));
    }
    line
}
