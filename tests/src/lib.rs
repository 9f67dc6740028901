//! Test support for Portcullis: the guest fixtures (built by `build.rs`),
//! an echo upstream, an in-process gateway on ephemeral ports, and a small
//! HTTP client.

pub mod backend;
pub mod bench;
pub mod echo;
pub mod h2;
pub mod idp;
pub mod prom;
pub mod tls;
pub mod upstream;
pub mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis::GatewayHandle;
use portcullis::registry::ReloadEvent;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

/// Paths of the guest fixtures, built for `wasm32-wasip2` by `build.rs`.
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));
}

/// The nine policy plugins the example config (`examples/portcullis.toml`)
/// uses, named as it uses them (`mtls_auth` needs a TLS listener, which the
/// example has not).
pub const POLICY_PLUGINS: [(&str, &str); 9] = [
    ("alerts", fixtures::ALERTS),
    ("key_auth", fixtures::KEY_AUTH),
    ("basic_auth", fixtures::BASIC_AUTH),
    ("jwt_auth", fixtures::JWT_AUTH),
    ("rbac", fixtures::RBAC),
    ("rate_limit", fixtures::RATE_LIMIT),
    ("rewrite", fixtures::REWRITE),
    ("mask", fixtures::MASK),
    ("api_version", fixtures::API_VERSION),
];

static LOGS: Mutex<String> = Mutex::new(String::new());

/// Log lines go to the test's output (shown for failing tests) and to a
/// buffer that [`logged`] searches. `RUST_LOG` filters them.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogTee)
            .try_init();
    });
}

struct LogTee;

impl std::io::Write for LogTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        print!("{text}");
        if let Ok(mut logs) = LOGS.lock() {
            logs.push_str(&text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line written so far that contains each of `parts`.
pub fn logged_lines(parts: &[&str]) -> Vec<String> {
    LOGS.lock()
        .map(|logs| {
            logs.lines()
                .filter(|line| parts.iter().all(|p| line.contains(p)))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether one log line written so far contains every one of `parts`.
pub fn logged(parts: &[&str]) -> bool {
    LOGS.lock()
        .map(|logs| {
            logs.lines()
                .any(|line| parts.iter().all(|p| line.contains(p)))
        })
        .unwrap_or(false)
}

/// A gateway running in-process on 127.0.0.1 with its own temporary
/// directory holding `portcullis.toml` and `plugins/`.
pub struct TestGateway {
    /// The running gateway.
    pub handle: GatewayHandle,
    /// Its first listener.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGateway")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The config header every test gateway shares: one listener on an
/// ephemeral port, the plugin directory, and a small instance pool (each
/// engine reserves address space for its pool).
pub fn base_config(upstream: SocketAddr) -> String {
    format!(
        r#"
# Each test gateway has its own state (compiled-module cache and key).
state_directory = "state"

[[listeners]]
address = "127.0.0.1:0"

[plugins]
directory = "plugins"
# Plugins that tick (alerts) see the test's clock moves quickly.
tick_interval_ms = 20

[limits]
max_instances = 64
plugin_memory_mib = 32
plugin_timeout_ms = 100

[upstreams.echo]
servers = ["{upstream}"]
timeout_ms = 2000
"#
    )
}

/// TOML of one `[[routes]]` entry, to follow [`base_config`]: the route
/// `name` on `path_prefix`, proxied to the `echo` upstream through `plugins`
/// in order. A plugin is its installed name and the body of its
/// `[routes.plugins.config]` table: `key = value` lines, then any
/// sub-tables as `[routes.plugins.config.<key>]` (`""`: no config table).
/// `route("api", "/api", &[("rbac", "rules = []")])` is:
///
/// ```toml
/// [[routes]]
/// name = "api"
/// path_prefix = "/api"
/// upstream = "echo"
///
/// [[routes.plugins]]
/// name = "rbac"
/// [routes.plugins.config]
/// rules = []
/// ```
pub fn route(name: &str, path_prefix: &str, plugins: &[(&str, &str)]) -> String {
    let mut toml = format!(
        r#"
[[routes]]
name = "{name}"
path_prefix = "{path_prefix}"
upstream = "echo"
"#
    );
    for (plugin, config) in plugins {
        toml.push_str(&format!("\n[[routes.plugins]]\nname = \"{plugin}\"\n"));
        if !config.trim().is_empty() {
            toml.push_str(&format!("[routes.plugins.config]\n{config}\n"));
        }
    }
    toml
}

/// Starts an [`Echo`](echo::Echo) upstream and, in front of it, a gateway
/// whose config is [`base_config`] followed by `routes` (see [`route`]),
/// with `plugins` (name, fixture path) installed. Panics if either fails to
/// start.
pub async fn start_routes(routes: &str, plugins: &[(&str, &str)]) -> (TestGateway, echo::Echo) {
    let echo = echo::Echo::start_local().await.expect("echo starts");
    let config = format!("{}{routes}", base_config(echo.addr));
    let gw = TestGateway::start(&config, plugins)
        .await
        .expect("gateway starts");
    (gw, echo)
}

/// Like [`start_routes`], with the gateway's clock under the test's control
/// (see [`TestGateway::start_with_clock`]).
pub async fn start_routes_with_clock(
    routes: &str,
    plugins: &[(&str, &str)],
    clock: &Arc<portcullis::clock::ManualClock>,
) -> (TestGateway, echo::Echo) {
    let echo = echo::Echo::start_local().await.expect("echo starts");
    let config = format!("{}{routes}", base_config(echo.addr));
    let gw = TestGateway::start_with_clock(&config, plugins, clock.clone())
        .await
        .expect("gateway starts");
    (gw, echo)
}

/// Like [`start_routes`], with `files` (name, text) written into the
/// gateway's directory, next to `portcullis.toml`, before it starts: for
/// plugins that take config values from files (`files = { key = "name" }`
/// in the route, or a `[routes.plugins.files]` table after the config
/// table in a [`route`]).
pub async fn start_routes_with_files(
    routes: &str,
    plugins: &[(&str, &str)],
    files: &[(&str, &str)],
) -> (TestGateway, echo::Echo) {
    let echo = echo::Echo::start_local().await.expect("echo starts");
    let config = format!("{}{routes}", base_config(echo.addr));
    let dir = TestGateway::prepare(&config, plugins).expect("prepare");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)
            .unwrap_or_else(|e| panic!("writing {name}: {e}"));
    }
    let gw = TestGateway::start_in(dir).await.expect("gateway starts");
    (gw, echo)
}

/// Asserts that a gateway whose config is [`base_config`] followed by
/// `routes`, with `plugins` installed, refuses to start, with an error
/// (the message and its causes, as `{:#}` shows them) that contains every
/// one of `parts`. Returns that error text.
pub async fn assert_config_refused(
    routes: &str,
    plugins: &[(&str, &str)],
    parts: &[&str],
) -> String {
    let echo = echo::Echo::start_local().await.expect("echo starts");
    let config = format!("{}{routes}", base_config(echo.addr));
    let dir = TestGateway::prepare(&config, plugins).expect("prepare");
    let err = TestGateway::start_in(dir)
        .await
        .expect_err("the config must be refused");
    let message = format!("{err:#}");
    for part in parts {
        assert!(message.contains(part), "`{part}` missing in: {message}");
    }
    message
}

impl TestGateway {
    /// Writes `config` and copies `plugins` (name, fixture path) into a new
    /// temporary directory, then starts the gateway.
    pub async fn start(config: &str, plugins: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = Self::prepare(config, plugins)?;
        Self::start_in(dir).await
    }

    /// Like [`start`](Self::start) but returns the directory without
    /// starting, for tests of start-up failures.
    pub fn prepare(config: &str, plugins: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
        init_logs();
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("plugins"))?;
        std::fs::write(dir.path().join("portcullis.toml"), config)?;
        for (name, path) in plugins {
            std::fs::copy(
                path,
                dir.path().join("plugins").join(format!("{name}.wasm")),
            )?;
        }
        Ok(dir)
    }

    /// Like [`start`](Self::start), with the gateway's clock (what plugins
    /// read as `now-ms`, and what expires store entries) under the test's
    /// control: for windows, buckets and cooldowns without sleeping.
    pub async fn start_with_clock(
        config: &str,
        plugins: &[(&str, &str)],
        clock: Arc<portcullis::clock::ManualClock>,
    ) -> anyhow::Result<Self> {
        let dir = Self::prepare(config, plugins)?;
        Self::launch(dir, Some(clock)).await
    }

    /// Starts a gateway on a directory made by [`prepare`](Self::prepare).
    pub async fn start_in(dir: tempfile::TempDir) -> anyhow::Result<Self> {
        Self::launch(dir, None).await
    }

    /// Starts a gateway on a directory made by [`prepare`](Self::prepare),
    /// with the gateway's clock under the test's control.
    pub async fn start_in_with_clock(
        dir: tempfile::TempDir,
        clock: Arc<portcullis::clock::ManualClock>,
    ) -> anyhow::Result<Self> {
        Self::launch(dir, Some(clock)).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        clock: Option<Arc<portcullis::clock::ManualClock>>,
    ) -> anyhow::Result<Self> {
        let mut builder = portcullis::Gateway::builder(dir.path().join("portcullis.toml"));
        if let Some(clock) = clock {
            builder = builder.clock(clock);
        }
        let handle = builder.start().await?;
        let addr = handle.local_addrs()[0];
        let gateway = Self { handle, addr, dir };
        gateway.wait_optimized().await;
        Ok(gateway)
    }

    /// Waits (at most two minutes, a bound for loaded CI machines) until
    /// every module the routes use serves its optimized build: a module
    /// compiled at start serves a baseline build first, and the swap makes
    /// a new generation with new pools, which tests that look at pools or
    /// generations should not race with.
    pub async fn wait_optimized(&self) {
        let optimized = || {
            self.handle.registry().current().routes.iter().all(|route| {
                route
                    .chain
                    .iter()
                    .all(|link| link.pool.plugin().tier == portcullis::plugin::Tier::Optimized)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !optimized() {
            assert!(
                std::time::Instant::now() < deadline,
                "the optimized builds never replaced the baseline ones"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin directory.
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Installs `bytes` as `<name>.wasm` the way an operator should: write a
    /// temporary file in the same directory, then rename it into place.
    pub fn install(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.plugin_dir().join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.plugin_dir().join(format!("{name}.wasm")))
    }

    /// Reload events from now on.
    pub fn events(&self) -> broadcast::Receiver<ReloadEvent> {
        self.handle.subscribe()
    }

    /// Stops the gateway.
    pub async fn stop(self) {
        self.handle.shutdown().await;
    }

    /// Stops the gateway and starts another on the same directory (its
    /// config, plugins and state), as a process restart would.
    pub async fn restart(self) -> anyhow::Result<Self> {
        let Self { handle, dir, .. } = self;
        handle.shutdown().await;
        Self::start_in(dir).await
    }
}

/// Waits for the next reload event about `trigger`, for at most `timeout`.
pub async fn next_event(
    events: &mut broadcast::Receiver<ReloadEvent>,
    trigger: &portcullis::registry::Trigger,
    timeout: Duration,
) -> Option<ReloadEvent> {
    tokio::time::timeout(timeout, async {
        loop {
            match events.recv().await {
                Ok(event) if &event.trigger == trigger => return Some(event),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Waits for a config reload that `accept` takes, skipping others (a
/// certificate and its key land one after the other; the reload between
/// them is refused).
pub async fn wait_for_reload(
    events: &mut broadcast::Receiver<ReloadEvent>,
    accept: impl Fn(&portcullis::registry::Outcome) -> bool,
) -> portcullis::registry::Outcome {
    loop {
        let event = next_event(
            events,
            &portcullis::registry::Trigger::Config,
            Duration::from_secs(20),
        )
        .await
        .expect("a config reload");
        if accept(&event.outcome) {
            return event.outcome;
        }
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Trailers, if the response had any.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// Asserts that the status is 200 OK, showing the body if it is not.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }

    /// Asserts that the gateway itself answered with `status` (showing the
    /// body if not) and the JSON body `{"message": message}`, and that the
    /// upstream did not answer.
    #[track_caller]
    pub fn assert_refused(&self, status: StatusCode, message: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("x-upstream"),
            None,
            "the upstream must not answer"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body: serde_json::Value = self.json().expect("JSON body");
        assert_eq!(body, serde_json::json!({ "message": message }));
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// What the echo upstream saw (panics with the body if it is not that).
    pub fn seen(&self) -> echo::Seen {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo response ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The SHA-256 of `bytes` in hex: the form of
/// [`Seen::body_sha256`](echo::Seen::body_sha256) and of the key hashes in
/// plugin configs.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Body type of the test client.
pub type ClientBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, ClientBody>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A new client with its own connection pool.
    pub fn new() -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// Sends a request with a body given as a `ClientBody`.
    pub async fn send(&self, request: Request<ClientBody>) -> anyhow::Result<Reply> {
        let response = self.inner.request(request).await?;
        let (head, body) = response.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// Sends `method url` with `headers` and `body`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let body = Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync();
        self.send(builder.body(body)?).await
    }

    /// `GET url` with `headers`.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }
}
