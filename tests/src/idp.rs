//! A small identity provider on 127.0.0.1 for the tests of plugins that
//! call out (contract 0.2.3): OpenID Connect discovery, a JWKS the test
//! rotates, an OAuth 2.0 introspection endpoint (RFC 7662), and a few
//! paths that misbehave on purpose. It counts the requests of each path.
//!
//! - `GET /.well-known/openid-configuration`: `issuer` (the base URL, or
//!   [`IdpState::issuer`]), `jwks_uri` (`<base>/jwks`) and
//!   `introspection_endpoint` (`<base>/introspect`), shaped like
//!   Keycloak's.
//! - `GET /jwks`: [`IdpState::jwks`], with [`IdpState::cache_control`].
//! - `POST /introspect`: the client authenticates with Basic or
//!   `client_id`/`client_secret` in the form (RFC 6749 §2.3.1); a wrong
//!   one gets `401`. The token's answer is [`IdpState::tokens`]'s entry,
//!   or `{"active":false}`.
//! - `GET /redirect?to=<url>`: `302` to `<url>`.
//! - `GET /big`: a 2 MiB body.
//! - `GET /slow`: answers after 5 s.
//! - With [`IdpState::down`], every path answers `503`.
//!
//! [`Idp::start_tls`] serves the same over HTTPS.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// What the provider serves; the test changes it at will.
#[derive(Debug, Default)]
pub struct IdpState {
    /// The JWKS document served at `/jwks`.
    pub jwks: String,
    /// The `Cache-Control` of `/jwks`, if any.
    pub cache_control: Option<String>,
    /// The `issuer` of the discovery document; the base URL when unset.
    pub issuer: Option<String>,
    /// Introspection answers by token.
    pub tokens: HashMap<String, Value>,
    /// The introspection client's id and secret.
    pub client: (String, String),
    /// Whether every path answers 503.
    pub down: bool,
    /// Requests by path.
    pub hits: HashMap<String, usize>,
    /// How the last introspection client authenticated: `basic` or `post`.
    pub last_client_auth: Option<&'static str>,
}

/// A running provider; it stops when dropped.
pub struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    task: tokio::task::JoinHandle<()>,
    scheme: &'static str,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    /// Starts a provider with `state`, on plain HTTP.
    pub async fn start(state: IdpState) -> Self {
        Self::serve(state, None).await
    }

    /// Starts a provider with `state`, on HTTPS with `tls`.
    pub async fn start_tls(state: IdpState, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::serve(state, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn serve(state: IdpState, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, addr, scheme, state.clone()));
                    let http = http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Self {
            addr,
            state,
            task,
            scheme,
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (or `https://`), the origin to allow.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// The state, to read or change.
    pub fn state(&self) -> MutexGuard<'_, IdpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.state().hits.get(path).copied().unwrap_or(0)
    }

    /// Waits (polling, at most 10 s as a safety net) until `path` has been
    /// requested `n` times or more; panics otherwise.
    pub async fn until_hits(&self, path: &str, n: usize) {
        for _ in 0..500 {
            if self.hits(path) >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{path} was requested {} times, not {n}", self.hits(path));
    }
}

async fn answer(
    req: Request<Incoming>,
    addr: SocketAddr,
    scheme: &str,
    state: Arc<Mutex<IdpState>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let base = format!("{scheme}://{addr}");
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    let json_reply = |value: Value| {
        let mut response = reply(StatusCode::OK, value.to_string());
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
        response
    };
    {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        *state.hits.entry(path.clone()).or_default() += 1;
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    if state.down {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "down".into()));
    }
    Ok(match path.as_str() {
        "/.well-known/openid-configuration" => json_reply(json!({
            "issuer": state.issuer.clone().unwrap_or_else(|| base.clone()),
            "jwks_uri": format!("{base}/jwks"),
            "introspection_endpoint": format!("{base}/introspect"),
            "token_endpoint": format!("{base}/token"),
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        })),
        "/jwks" => {
            let mut response = json_reply(Value::Null);
            *response.body_mut() = Full::new(Bytes::from(state.jwks.clone()));
            if let Some(cc) = &state.cache_control {
                response
                    .headers_mut()
                    .insert("cache-control", cc.parse().expect("value"));
            }
            response
        }
        "/introspect" => {
            let form: HashMap<String, String> =
                form_urlencoded::parse(&body).into_owned().collect();
            let basic = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let (who, how) = match (basic, form.get("client_id"), form.get("client_secret")) {
                (Some(pair), _, _) => {
                    let (id, secret) = pair.split_once(':').unwrap_or((&pair, ""));
                    ((id.to_owned(), secret.to_owned()), "basic")
                }
                (None, Some(id), Some(secret)) => ((id.clone(), secret.clone()), "post"),
                _ => ((String::new(), String::new()), "none"),
            };
            state.last_client_auth = Some(how);
            if who != state.client || parts.method != http::Method::POST {
                return Ok(reply(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"invalid_client"}"#.into(),
                ));
            }
            let token = form.get("token").cloned().unwrap_or_default();
            json_reply(
                state
                    .tokens
                    .get(&token)
                    .cloned()
                    .unwrap_or_else(|| json!({ "active": false })),
            )
        }
        "/redirect" => {
            let to = parts
                .uri
                .query()
                .and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "to")
                        .map(|(_, v)| v.into_owned())
                })
                .unwrap_or_default();
            let mut response = reply(StatusCode::FOUND, String::new());
            response
                .headers_mut()
                .insert("location", to.parse().expect("location"));
            response
        }
        "/big" => reply(StatusCode::OK, "x".repeat(2 * 1024 * 1024)),
        "/slow" => reply(StatusCode::OK, "late".into()),
        _ => reply(StatusCode::NOT_FOUND, "not found".into()),
    })
}
