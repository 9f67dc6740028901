//! The gateway's configuration: the TOML schema, loading, and validation.
//!
//! Parsing rejects unknown keys; [`Config::validate`] then checks what serde
//! cannot (references between sections, duplicates, ranges) and reports every
//! problem at once, each with the key it concerns. A configuration that fails
//! either step never serves: at start the binary exits before binding a port,
//! and on reload the previous configuration keeps serving.
//!
//! A complete example lives in `examples/portcullis.toml`; `docs/config.md`
//! documents every key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod alerts;
mod listener;
mod outbound;
mod rollout;
mod signatures;
mod traces;
mod upstream;

pub use admin::AdminConfig;
pub use outbound::{Origin, OutboundConfig};
pub use rollout::{CanaryConfig, ShadowConfig};
pub use signatures::SignaturesConfig;
pub use traces::{OtlpConfig, TracingConfig};

pub use alerts::{AlertsConfig, Severity, WebhookConfig};
pub use listener::{
    CertificateConfig, ClientAuthConfig, ClientAuthMode, Http1Config, Http2Config, ListenerConfig,
    TlsConfig,
};
pub use upstream::{
    Balance, HashOn, HealthCheckConfig, HealthCheckKind, OutlierConfig, RetryConfig, ServerConfig,
    UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig, server_authority,
};

/// The whole configuration file.
///
/// ```toml
/// [[listeners]]
/// address = "127.0.0.1:8080"
///
/// [plugins]
/// directory = "plugins"
///
/// [upstreams.backend]
/// servers = ["127.0.0.1:9000"]
///
/// [[routes]]
/// name = "api"
/// path_prefix = "/api"
/// upstream = "backend"
/// plugins = [{ name = "key_auth", config = { keys = [] } }]
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gateway's own state (the compiled-module cache and its key).
    /// Relative to the config file. Default: `$STATE_DIRECTORY` (set by
    /// systemd's `StateDirectory=`), else `$XDG_STATE_HOME/portcullis`,
    /// else `$HOME/.local/state/portcullis`, else `.portcullis-state`
    /// beside the config file.
    #[serde(default)]
    pub state_directory: Option<PathBuf>,
    /// Threads that serve connections and run plugins. Default: the CPUs
    /// this process may run on (its affinity mask, so `taskset -c 0`
    /// gives one).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Where the gateway accepts connections.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Proxies in front of the gateway (addresses or CIDR blocks) whose
    /// `X-Forwarded-For` and `X-Forwarded-Proto` are believed: for a
    /// request from one of them, the client is the rightmost address of
    /// `X-Forwarded-For` that is not a trusted proxy.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Which headers tell the upstream about the client and this hop.
    #[serde(default)]
    pub forwarded_headers: ForwardedHeaders,
    /// Where plugin modules are loaded from.
    pub plugins: PluginsConfig,
    /// Resource limits for plugins and bodies.
    #[serde(default)]
    pub limits: Limits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Named groups of upstream servers.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, each with its plugin chain.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Where alerts raised by plugins are delivered.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The admin listener: metrics, the admin API and the dashboard. Off
    /// without this section.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// W3C trace context.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Signed plugin modules.
    #[serde(default)]
    pub signatures: SignaturesConfig,
    /// The audit trail of policy changes.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The directory of the config file, which relative paths start from
    /// (not a key).
    #[serde(skip)]
    pub base_directory: PathBuf,
}

/// The audit trail: one hash-chained JSON line per change to the running
/// policy (see docs/safe-updates.md#audit).
///
/// ```toml
/// [audit]
/// file = "/var/log/portcullis/audit.jsonl"   # default: <state_directory>/audit.jsonl
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Keep the trail (on by default).
    #[serde(default = "AuditConfig::default_enabled")]
    pub enabled: bool,
    /// Where; relative paths are relative to the config file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `state_directory`, resolved (not a key).
    #[serde(skip)]
    state_directory: PathBuf,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
            state_directory: PathBuf::new(),
        }
    }
}

impl AuditConfig {
    fn default_enabled() -> bool {
        true
    }

    /// The trail's file, when it is kept.
    pub fn file(&self) -> Option<PathBuf> {
        self.enabled.then(|| {
            self.file
                .clone()
                .unwrap_or_else(|| self.state_directory.join("audit.jsonl"))
        })
    }
}

/// Which headers tell the upstream who the client is and how it reached
/// this hop (`forwarded_headers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For`, `-Proto` and `-Host`, what most upstreams read.
    #[default]
    #[serde(rename = "x-forwarded")]
    XForwarded,
    /// RFC 7239 `Forwarded: for=...;proto=...;host=...` only; untrusted
    /// peers' `X-Forwarded-*` headers are removed rather than passed on.
    #[serde(rename = "forwarded")]
    Forwarded,
    /// Both.
    #[serde(rename = "both")]
    Both,
}

/// The plugin directory.
///
/// ```toml
/// [plugins]
/// directory = "plugins"          # relative to the config file
/// cache_directory = "/var/lib/portcullis/modules"   # default <state_directory>/modules
/// watch = true                   # hot-load changed modules
/// tick_interval_ms = 1000        # how often `on-tick` runs
/// baseline_compiler = true       # new modules serve a Winch build first
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory holding `<name>.wasm` files; the file name is the plugin name.
    pub directory: PathBuf,
    /// Directory for compiled modules, keyed by content hash and engine,
    /// each authenticated with the state directory's key. Defaults to
    /// `<state_directory>/modules`.
    #[serde(default)]
    pub cache_directory: Option<PathBuf>,
    /// Whether to watch the directory and the config file and reload on change.
    #[serde(default = "yes")]
    pub watch: bool,
    /// How often plugins that implement `on-tick` are called, in ms.
    #[serde(default = "PluginsConfig::default_tick_interval")]
    pub tick_interval_ms: u64,
    /// Whether a module never compiled before serves a baseline (Winch)
    /// build at once while its optimized build compiles in the background;
    /// `false` waits for the optimized build.
    #[serde(default = "yes")]
    pub baseline_compiler: bool,
}

impl PluginsConfig {
    fn default_tick_interval() -> u64 {
        1_000
    }
}

/// Limits on plugins and bodies.
///
/// ```toml
/// [limits]
/// plugin_memory_mib = 64
/// plugin_timeout_ms = 50
/// max_instances = 1000
/// max_body_bytes = 1048576
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory cap of one plugin instance, in MiB. A plugin that grows
    /// past it traps and fails only the request it was serving.
    #[serde(default = "Limits::default_memory")]
    pub plugin_memory_mib: u32,
    /// CPU deadline of one plugin call, in milliseconds (enforced in steps of
    /// 10 ms). A call that runs past it is interrupted.
    #[serde(default = "Limits::default_timeout")]
    pub plugin_timeout_ms: u64,
    /// Most plugin instances alive at once, across all plugins and routes.
    #[serde(default = "Limits::default_instances")]
    pub max_instances: u32,
    /// Largest body buffered for a plugin that reads bodies; larger bodies
    /// stream through untouched.
    #[serde(default = "Limits::default_body")]
    pub max_body_bytes: usize,
    /// Most entries in each plugin's namespace of the shared store.
    #[serde(default = "Limits::default_state_entries")]
    pub state_max_entries: usize,
    /// Most bytes (keys, values and 64 bytes an entry) in each plugin's
    /// namespace of the shared store.
    #[serde(default = "Limits::default_state_bytes")]
    pub state_max_bytes: usize,
    /// Most alerts waiting for delivery; more are dropped and counted.
    #[serde(default = "Limits::default_alert_queue")]
    pub alert_queue: usize,
    /// Largest request body a route takes, unless the route says
    /// otherwise: a larger `Content-Length` is answered 413 at once, a
    /// body that grows past it while streaming is cut off and answered
    /// 413 (the upstream request is aborted).
    #[serde(default = "Limits::default_request_body")]
    pub max_request_body_bytes: u64,
    /// Longest request target (path and query) taken; longer is 414.
    #[serde(default = "Limits::default_uri")]
    pub max_uri_bytes: usize,
    /// How long a request body may go without a byte arriving, in ms;
    /// past it the request is answered 408 (the upstream request is
    /// aborted).
    #[serde(default = "Limits::default_body_idle")]
    pub request_body_idle_timeout_ms: u64,
}

impl Limits {
    fn default_memory() -> u32 {
        64
    }
    fn default_timeout() -> u64 {
        50
    }
    fn default_instances() -> u32 {
        1000
    }
    fn default_body() -> usize {
        1024 * 1024
    }
    fn default_state_entries() -> usize {
        1_000_000
    }
    fn default_state_bytes() -> usize {
        256 * 1024 * 1024
    }
    fn default_alert_queue() -> usize {
        1024
    }
    fn default_request_body() -> u64 {
        64 * 1024 * 1024
    }
    fn default_uri() -> usize {
        8 * 1024
    }
    fn default_body_idle() -> u64 {
        30_000
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            plugin_memory_mib: Self::default_memory(),
            plugin_timeout_ms: Self::default_timeout(),
            max_instances: Self::default_instances(),
            max_body_bytes: Self::default_body(),
            state_max_entries: Self::default_state_entries(),
            state_max_bytes: Self::default_state_bytes(),
            alert_queue: Self::default_alert_queue(),
            max_request_body_bytes: Self::default_request_body(),
            max_uri_bytes: Self::default_uri(),
            request_body_idle_timeout_ms: Self::default_body_idle(),
        }
    }
}

/// Log output.
///
/// ```toml
/// [log]
/// format = "json"     # or "text"
/// level = "info"      # or a tracing filter such as "portcullis=debug"
/// access_log = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` overrides it.
    #[serde(default = "LogConfig::default_level")]
    pub level: String,
    /// Whether to write one access-log line per request.
    #[serde(default = "yes")]
    pub access_log: bool,
}

impl LogConfig {
    fn default_level() -> String {
        "info".to_owned()
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: Self::default_level(),
            access_log: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A route: which requests it takes, where they go, and the plugins they
/// pass through in order.
///
/// ```toml
/// [[routes]]
/// name = "orders"
/// hosts = ["api.example.com", "*.example.org"]   # default: any host
/// path_prefix = "/orders"                        # default: "/"
/// methods = ["GET", "POST"]                      # default: any method
/// upstream = "backend"
///
/// [[routes.plugins]]
/// name = "key_auth"
/// on_error = "deny"
/// config = { header = "x-api-key", keys = [{ consumer = "ci", sha256 = "..." }] }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs and handed to plugins.
    pub name: String,
    /// Host names (exact, or `*.suffix`); empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefix, matched on whole segments: `/api` takes `/api` and
    /// `/api/x` but not `/apix`.
    #[serde(default = "RouteConfig::default_prefix")]
    pub path_prefix: String,
    /// Whether `path_prefix` matches letter case exactly; `false` also
    /// takes `/API/x` on `/api` (ASCII letters only).
    #[serde(default = "RouteConfig::default_case_sensitive")]
    pub case_sensitive: bool,
    /// Allowed methods; empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Name of the upstream in `[upstreams]`.
    pub upstream: String,
    /// The plugin chain, run in this order for requests.
    #[serde(default)]
    pub plugins: Vec<RoutePlugin>,
    /// Whether WebSocket handshakes are carried on; `false` answers them
    /// 403 before any plugin runs.
    #[serde(default = "yes")]
    pub websocket: bool,
    /// Deadline for the whole request up to the response head (plugins,
    /// the upstream and any wait), in ms; past it the client gets 504.
    /// Default: none beyond the upstream's `timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Largest request body, in bytes; default
    /// `limits.max_request_body_bytes`.
    #[serde(default)]
    pub max_request_body_bytes: Option<u64>,
    /// How long an upgraded (WebSocket) connection may carry no byte in
    /// either direction before the gateway closes it, in ms.
    #[serde(default = "RouteConfig::default_upgrade_idle_timeout")]
    pub upgrade_idle_timeout_ms: u64,
    /// How long to wait for the upstream's response head on this route, in
    /// ms, in place of the group's `timeout_ms` (each try of a retry).
    #[serde(default)]
    pub upstream_timeout_ms: Option<u64>,
    /// Retries on this route, in place of the group's.
    #[serde(default)]
    pub retries: Option<RetryConfig>,
    /// Whether this route's requests are also counted by consumer
    /// (`portcullis_consumer_requests_total`). Off by default: a label per
    /// consumer is as many series as there are consumers.
    #[serde(default)]
    pub metrics_consumer_label: bool,
}

impl RouteConfig {
    fn default_prefix() -> String {
        "/".to_owned()
    }

    fn default_case_sensitive() -> bool {
        true
    }

    fn default_upgrade_idle_timeout() -> u64 {
        300_000
    }
}

/// One plugin in a route's chain.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePlugin {
    /// The plugin's name: the module `<name>.wasm` in the plugin directory.
    pub name: String,
    /// What happens to a request when this plugin fails (traps, runs out of
    /// time or memory): `deny` answers 500, `allow` goes on without it.
    #[serde(default)]
    pub on_error: OnError,
    /// CPU deadline of one call of this plugin on this route, in ms;
    /// default `limits.plugin_timeout_ms`. For plugins that are slow by
    /// design, such as password hashing.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Calls of this plugin on this route in flight at once; a call past
    /// it waits for a turn (up to `queue_timeout_ms`, then 503).
    #[serde(default = "RoutePlugin::default_max_concurrent_calls")]
    pub max_concurrent_calls: u32,
    /// How long a call may wait for a turn, in ms, before its request is
    /// answered 503 with `Retry-After`.
    #[serde(default = "RoutePlugin::default_queue_timeout")]
    pub queue_timeout_ms: u64,
    /// The plugin's own configuration, handed to its `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Files whose text becomes config values: `files = { jwks = "jwks.json" }`
    /// sets `config.jwks` to the text of `jwks.json` (relative to the config
    /// file). Read when the config is loaded or reloaded.
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    /// A candidate run in shadow next to this plugin: see
    /// [`ShadowConfig`].
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    /// A candidate taking a share of this plugin's requests: see
    /// [`CanaryConfig`].
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
    /// The origins the plugin may call on this route, and the caps: see
    /// [`OutboundConfig`]. Without it, the plugin's calls are refused.
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
}

impl RoutePlugin {
    fn default_max_concurrent_calls() -> u32 {
        crate::plugin::CallLimits::DEFAULT_MAX_CONCURRENT
    }

    fn default_queue_timeout() -> u64 {
        crate::plugin::CallLimits::DEFAULT_QUEUE_TIMEOUT_MS
    }
}

/// What to do with a request when a plugin fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: answer 500.
    #[default]
    Deny,
    /// Fail open: go on as if the plugin had not been configured.
    Allow,
}

fn yes() -> bool {
    true
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// The file parsed but its content is inconsistent.
    #[error("invalid config file {path}:\n{}", Problems(problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// One problem found by validation, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, e.g. `routes[1].upstream`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

impl Config {
    /// Reads, parses and validates the file at `path`. Relative paths in the
    /// file are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, |_| {})
    }

    /// [`Config::load`], with `adjust` applied after the file is validated
    /// and its paths resolved, before the files it names are read.
    pub fn load_with(path: &Path, adjust: impl FnOnce(&mut Self)) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        config.resolve_paths(base);
        adjust(&mut config);
        let problems = config.read_files();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// Rewrites the config for an offline run (`portcullis test`): every
    /// upstream group becomes the one plain-HTTP server `upstream` (no
    /// TLS, health checks or ejection), and everything that would reach
    /// outside or leave a trace is off: listeners' TLS (the certificates
    /// are `portcullis check`'s to check), the admin listener, alert
    /// webhooks, span export, the audit trail, file watching, signature
    /// checks, and shadow and canary candidates (the stable policy is what
    /// is tested). Routes, plugins, their config and limits stay as they
    /// are.
    pub fn go_offline(&mut self, upstream: std::net::SocketAddr) {
        for listener in &mut self.listeners {
            listener.tls = None;
        }
        self.admin = None;
        self.alerts.webhooks.clear();
        self.tracing.otlp = None;
        self.audit.enabled = false;
        self.plugins.watch = false;
        self.signatures.required = false;
        self.signatures.trusted_keys.clear();
        // The stable policy is what is tested: a candidate's share of a
        // run would depend on how its requests hash.
        for plugin in self.routes.iter_mut().flat_map(|r| &mut r.plugins) {
            plugin.shadow = None;
            plugin.canary = None;
        }
        for group in self.upstreams.values_mut() {
            group.servers = vec![upstream::ServerConfig {
                address: upstream.to_string(),
                weight: 1,
            }];
            group.tls = None;
            group.health = None;
            group.outlier.consecutive_failures = 0;
            if group.protocol == UpstreamProtocol::H2 {
                group.protocol = UpstreamProtocol::H2c;
            }
        }
    }

    /// Parses TOML text without validating it.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The directory of the gateway's own state (resolved: see
    /// [`Config::state_directory`](Config#structfield.state_directory)).
    pub fn state_directory(&self) -> PathBuf {
        if let Some(dir) = &self.state_directory {
            return dir.clone();
        }
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dirs) = env("STATE_DIRECTORY") {
            // systemd passes a `:`-separated list; the first is ours.
            if let Some(first) = std::env::split_paths(&dirs).next() {
                return first;
            }
        }
        if let Some(xdg) = env("XDG_STATE_HOME") {
            return PathBuf::from(xdg).join("portcullis");
        }
        if let Some(home) = env("HOME") {
            return PathBuf::from(home).join(".local/state/portcullis");
        }
        self.base_directory.join(".portcullis-state")
    }

    /// The cache directory for compiled modules.
    pub fn cache_directory(&self) -> PathBuf {
        self.plugins
            .cache_directory
            .clone()
            .unwrap_or_else(|| self.state_directory().join("modules"))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.base_directory = base.to_owned();
        resolve(&mut self.plugins.directory);
        if let Some(cache) = self.plugins.cache_directory.as_mut() {
            resolve(cache);
        }
        if let Some(state) = self.state_directory.as_mut() {
            resolve(state);
        }
        for route in &mut self.routes {
            for plugin in &mut route.plugins {
                plugin.files.values_mut().for_each(resolve);
                if let Some(ca) = plugin.outbound.as_mut().and_then(|o| o.ca.as_mut()) {
                    resolve(ca);
                }
            }
        }
        for listener in &mut self.listeners {
            listener.resolve_paths(&resolve);
        }
        if let Some(admin) = self.admin.as_mut() {
            admin.resolve_paths(&resolve);
        }
        if let Some(otlp) = self.tracing.otlp.as_mut() {
            otlp.resolve_paths(&resolve);
        }
        self.signatures.resolve_paths(&resolve);
        if let Some(file) = self.audit.file.as_mut() {
            resolve(file);
        }
        self.audit.state_directory = self.state_directory();
        for tls in self.upstreams.values_mut().filter_map(|u| u.tls.as_mut()) {
            for path in [&mut tls.ca, &mut tls.cert, &mut tls.key]
                .into_iter()
                .flatten()
            {
                resolve(path);
            }
        }
    }

    /// Reads every plugin's `files` into its `config`; returns a problem for
    /// each file that cannot be read.
    fn read_files(&mut self) -> Vec<Problem> {
        let mut problems = self.signatures.read_keys();
        if let Some(problem) = self.admin.as_mut().and_then(AdminConfig::read_token) {
            problems.push(problem);
        }
        for (i, route) in self.routes.iter_mut().enumerate() {
            for (j, plugin) in route.plugins.iter_mut().enumerate() {
                for (key, file) in &plugin.files {
                    match std::fs::read_to_string(file) {
                        Ok(text) => {
                            plugin.config.insert(key.clone(), toml::Value::String(text));
                        }
                        Err(e) => problems.push(Problem {
                            key: format!("routes[{i}].plugins[{j}].files.{key}"),
                            message: format!("cannot read {}: {e}", file.display()),
                        }),
                    }
                }
            }
        }
        problems
    }

    /// Every file that plugin configs are read from (after [`Config::load`],
    /// absolute or relative to the working directory): a change to one of
    /// them is a change to the config.
    pub fn plugin_files(&self) -> impl Iterator<Item = &Path> {
        self.routes
            .iter()
            .flat_map(|r| &r.plugins)
            .flat_map(|p| {
                p.files
                    .values()
                    .chain(p.outbound.as_ref().and_then(|o| o.ca.as_ref()))
            })
            .map(PathBuf::as_path)
    }

    /// Every file the config reads besides itself: plugin `files` and TLS
    /// certificates and keys (after [`Config::load`], absolute or relative
    /// to the working directory). A change to one of them is a change to
    /// the config.
    pub fn watched_files(&self) -> impl Iterator<Item = &Path> {
        self.plugin_files()
            .chain(self.listeners.iter().flat_map(ListenerConfig::files))
            .chain(self.admin.iter().flat_map(AdminConfig::files))
            .chain(self.upstreams.values().flat_map(UpstreamConfig::files))
            .chain(self.signatures.trusted_keys.iter().map(PathBuf::as_path))
    }

    /// Checks everything the schema cannot; returns every problem found.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        listener::validate(&self.listeners, &mut problems);
        admin::validate(self.admin.as_ref(), &mut problems);
        traces::validate(&self.tracing, &mut problems);
        signatures::validate(&self.signatures, &mut problems);
        let mut bad = |key: String, message: String| problems.push(Problem { key, message });
        if let Some(workers) = self.workers
            && !(1..=1024).contains(&workers)
        {
            bad(
                "workers".into(),
                format!("must be between 1 and 1024, got {workers}"),
            );
        }
        for (i, proxy) in self.trusted_proxies.iter().enumerate() {
            if parse_network(proxy).is_none() {
                bad(
                    format!("trusted_proxies[{i}]"),
                    format!("`{proxy}` is not an IP address or CIDR block, e.g. 10.0.0.0/8"),
                );
            }
        }

        if !(10..=3_600_000).contains(&self.plugins.tick_interval_ms) {
            bad(
                "plugins.tick_interval_ms".into(),
                format!(
                    "must be between 10 and 3600000, got {}",
                    self.plugins.tick_interval_ms
                ),
            );
        }

        let limits = &self.limits;
        if !(1..=4096).contains(&limits.plugin_memory_mib) {
            bad(
                "limits.plugin_memory_mib".into(),
                format!(
                    "must be between 1 and 4096, got {}",
                    limits.plugin_memory_mib
                ),
            );
        }
        if !(1..=60_000).contains(&limits.plugin_timeout_ms) {
            bad(
                "limits.plugin_timeout_ms".into(),
                format!(
                    "must be between 1 and 60000, got {}",
                    limits.plugin_timeout_ms
                ),
            );
        }
        if !(1..=100_000).contains(&limits.max_instances) {
            bad(
                "limits.max_instances".into(),
                format!("must be between 1 and 100000, got {}", limits.max_instances),
            );
        }
        if !(256..=1024 * 1024).contains(&limits.max_uri_bytes) {
            bad(
                "limits.max_uri_bytes".into(),
                format!(
                    "must be between 256 and 1048576, got {}",
                    limits.max_uri_bytes
                ),
            );
        }
        if !(100..=3_600_000).contains(&limits.request_body_idle_timeout_ms) {
            bad(
                "limits.request_body_idle_timeout_ms".into(),
                format!(
                    "must be between 100 and 3600000, got {}",
                    limits.request_body_idle_timeout_ms
                ),
            );
        }
        if limits.alert_queue == 0 {
            bad("limits.alert_queue".into(), "must be at least 1".into());
        }
        if self.log.level.trim().is_empty() {
            bad(
                "log.level".into(),
                "must be a level such as \"info\" or a filter such as \"portcullis=debug\"".into(),
            );
        }

        for (name, up) in &self.upstreams {
            up.validate(name, &mut bad);
        }

        let mut names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            if route.name.is_empty() {
                bad(key("name"), "must not be empty".into());
            } else if !names.insert(route.name.as_str()) {
                bad(
                    key("name"),
                    format!("route name `{}` is used by another route", route.name),
                );
            }
            if let Some(ms) = route.timeout_ms
                && !(1..=3_600_000).contains(&ms)
            {
                bad(
                    key("timeout_ms"),
                    format!("must be between 1 and 3600000, got {ms}"),
                );
            }
            if route.upstream_timeout_ms == Some(0) {
                bad(key("upstream_timeout_ms"), "must be at least 1".into());
            }
            if let Some(retries) = &route.retries {
                retries.validate(&format!("routes[{i}].retries"), &mut bad);
            }
            if !(1_000..=86_400_000).contains(&route.upgrade_idle_timeout_ms) {
                bad(
                    key("upgrade_idle_timeout_ms"),
                    format!(
                        "must be between 1000 and 86400000, got {}",
                        route.upgrade_idle_timeout_ms
                    ),
                );
            }
            if !route.path_prefix.starts_with('/') {
                bad(
                    key("path_prefix"),
                    format!("must start with `/`, got `{}`", route.path_prefix),
                );
            }
            for (j, host) in route.hosts.iter().enumerate() {
                if let Err(why) = check_host_pattern(host) {
                    bad(format!("routes[{i}].hosts[{j}]"), why);
                }
            }
            for (j, method) in route.methods.iter().enumerate() {
                if !METHODS.contains(&method.as_str()) {
                    bad(
                        format!("routes[{i}].methods[{j}]"),
                        format!(
                            "unknown method `{method}`, expected one of {}",
                            METHODS.join(", ")
                        ),
                    );
                }
            }
            if !self.upstreams.contains_key(&route.upstream) {
                let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                bad(
                    key("upstream"),
                    format!(
                        "unknown upstream `{}` (defined: {})",
                        route.upstream,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            for (j, plugin) in route.plugins.iter().enumerate() {
                if let Err(why) = check_plugin_name(&plugin.name) {
                    bad(format!("routes[{i}].plugins[{j}].name"), why);
                }
                if let Some(ms) = plugin.timeout_ms
                    && !(1..=60_000).contains(&ms)
                {
                    bad(
                        format!("routes[{i}].plugins[{j}].timeout_ms"),
                        format!("must be between 1 and 60000, got {ms}"),
                    );
                }
                if !(1..=100_000).contains(&plugin.max_concurrent_calls) {
                    bad(
                        format!("routes[{i}].plugins[{j}].max_concurrent_calls"),
                        format!(
                            "must be between 1 and 100000, got {}",
                            plugin.max_concurrent_calls
                        ),
                    );
                }
                if plugin.queue_timeout_ms > 60_000 {
                    bad(
                        format!("routes[{i}].plugins[{j}].queue_timeout_ms"),
                        format!("must be at most 60000, got {}", plugin.queue_timeout_ms),
                    );
                }
                if let Some(shadow) = &plugin.shadow {
                    shadow.validate(&format!("routes[{i}].plugins[{j}].shadow"), &mut bad);
                }
                if let Some(outbound) = &plugin.outbound {
                    outbound.validate(&format!("routes[{i}].plugins[{j}].outbound"), &mut bad);
                }
                if let Some(canary) = &plugin.canary {
                    canary.validate(&format!("routes[{i}].plugins[{j}].canary"), &mut bad);
                    if plugin.shadow.is_some() {
                        bad(
                            format!("routes[{i}].plugins[{j}].canary"),
                            "a plugin has a shadow or a canary, not both".into(),
                        );
                    }
                }
                for key in plugin.files.keys() {
                    if plugin.config.contains_key(key) {
                        bad(
                            format!("routes[{i}].plugins[{j}].files.{key}"),
                            format!(
                                "`{key}` is also set in the plugin's config table; set it in one place"
                            ),
                        );
                    }
                }
            }
        }
        self.alerts.validate(&mut problems);
        problems
    }
}

/// An IP address (one host) or a CIDR block.
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// A plugin name is a file stem: lowercase letters, digits, `_` and `-`.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a plugin name: use 1 to 64 of a-z, 0-9, `_` and `-` (the module is <name>.wasm)"
        ))
    }
}

pub(super) fn check_authority(server: &str) -> Result<(), String> {
    let parsed: Result<http::uri::Authority, _> = server.parse();
    match parsed {
        Ok(a) if a.port_u16().is_some() && !server.contains('@') => Ok(()),
        _ => Err(format!(
            "`{server}` is not a server address: expected host:port, e.g. 127.0.0.1:9000"
        )),
    }
}

/// A route host: a name, `*.suffix`, or an IPv6 address in brackets. A
/// port is refused: requests are matched on the host alone, so a route
/// host with a port would never match anything.
fn check_host_pattern(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("`{host}` is not an IPv6 address in brackets")),
        };
    }
    if host.contains(':') {
        return Err(if host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("write an IPv6 address in brackets, as in a Host header: `[{host}]`")
        } else {
            format!(
                "`{host}` has a port: routes match the host alone (any port), so write it without `:port`"
            )
        });
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name: expected e.g. api.example.com or *.example.com"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [plugins]
        directory = "plugins"
        [upstreams.b]
        servers = ["127.0.0.1:9"]
        [[routes]]
        name = "r"
        upstream = "b"
    "#;

    #[test]
    fn minimal_config_is_valid_and_has_defaults() {
        let config = Config::parse(MINIMAL).expect("parses");
        assert_eq!(config.validate(), vec![]);
        assert_eq!(config.routes[0].path_prefix, "/");
        assert_eq!(config.limits, Limits::default());
        assert!(config.plugins.watch);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = format!(
            "{MINIMAL}\n[[routes]]\nname = \"r\"\nupstream = \"nope\"\npath_prefix = \"x\"\nmethods = [\"FETCH\"]\n"
        );
        let config = Config::parse(&text).expect("parses");
        let keys: Vec<String> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "routes[1].name",
                "routes[1].path_prefix",
                "routes[1].methods[0]",
                "routes[1].upstream"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse(&format!("{MINIMAL}\n[limits]\nplugin_memory = 3\n"))
            .expect_err("unknown key");
        assert!(err.contains("unknown field `plugin_memory`"), "{err}");
    }

    #[test]
    fn route_hosts_have_no_port_and_ipv6_takes_brackets() {
        assert!(check_host_pattern("api.example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("[::1]").is_ok());
        let port = check_host_pattern("api.example.com:8080").expect_err("port");
        assert!(port.contains("has a port"), "{port}");
        let bare = check_host_pattern("::1").expect_err("bare IPv6");
        assert!(bare.contains("`[::1]`"), "{bare}");
        assert!(check_host_pattern("[nope]").is_err());
    }

    #[test]
    fn plugin_names_are_file_stems() {
        assert!(check_plugin_name("key_auth").is_ok());
        assert!(check_plugin_name("../etc").is_err());
        assert!(check_plugin_name("KeyAuth").is_err());
    }
}
