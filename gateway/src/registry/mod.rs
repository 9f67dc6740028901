//! Config generations: everything one request needs (config, routing table,
//! upstreams, initialised plugin pools), built off the request path,
//! validated as a whole, and published atomically.
//!
//! A request loads the current generation once and keeps it to the end, so
//! requests in flight finish on the version they started with while new ones
//! see the new version. A module or config that fails any step (compile,
//! world check, `init` with every route config that uses it) is rejected with
//! a logged reason and the current generation keeps serving.

pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::config::{Config, OnError};
use crate::plugin::{
    CallLimits, CompiledPlugin, Hooks, HostServices, ModuleCache, Outbound, PluginEngine,
    PluginError, PluginPool, PoolRole, Tier,
};
use crate::rollout::{Canary, CanaryInfo, RolloutBook};
use crate::router::Router;
use crate::server::ListenerRuntime;
use crate::server::tls::ListenerTls;
use crate::shadow::{Shadow, ShadowStats};
use crate::signing::SignatureError;
use crate::upstream::{RouteOverrides, Upstream};

/// One plugin in a route's chain, ready to run.
#[derive(Debug)]
pub struct ChainLink {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// What to do when it fails.
    pub on_error: OnError,
    /// Initialised instances for this route.
    pub pool: Arc<PluginPool>,
    /// The hooks it implements.
    pub hooks: Hooks,
    /// Its metrics on this route.
    pub metrics: crate::metrics::LinkMetrics,
    /// A candidate running in shadow next to it.
    pub shadow: Option<Arc<Shadow>>,
    /// A candidate taking a share of its requests.
    pub canary: Option<Arc<Canary>>,
}

impl ChainLink {
    /// The hooks of the live plugin and of its canary candidate together.
    pub fn all_hooks(&self) -> Hooks {
        match &self.canary {
            Some(canary) => self.hooks | canary.hooks(),
            None => self.hooks,
        }
    }
}

/// A route, ready to serve.
#[derive(Debug)]
pub struct RouteRuntime {
    /// The route's name.
    pub name: Arc<str>,
    /// Where its requests go.
    pub upstream: Arc<Upstream>,
    /// Its plugins, in request order.
    pub chain: Vec<ChainLink>,
    /// Whether a plugin reads the request body.
    pub request_body: bool,
    /// Whether a plugin reads the response body.
    pub response_body: bool,
    /// Whether WebSocket handshakes are carried on.
    pub websocket: bool,
    /// The largest request body it takes.
    pub max_request_body: u64,
    /// Its deadline up to the response head, if it has one.
    pub timeout: Option<Duration>,
    /// How long an upgraded connection may stay silent.
    pub upgrade_idle_timeout: Duration,
    /// The route's own upstream timeout and retries, if it sets them.
    pub upstream_overrides: RouteOverrides,
    /// Its metrics.
    pub metrics: crate::metrics::RouteMetrics,
}

/// Everything a request needs, immutable once published.
#[derive(Debug)]
pub struct Generation {
    /// Increases by one with every published generation.
    pub id: u64,
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// The routing table.
    pub router: Router,
    /// Routes, in config order (the router returns indexes into this).
    pub routes: Vec<RouteRuntime>,
    /// Each listener's protocol settings, in config order.
    pub listeners: Vec<Arc<ListenerRuntime>>,
    /// The admin listener's certificates, with `[admin.tls]`: a reload
    /// (a change to the config or to one of their files) replaces them
    /// for the next connection.
    pub admin_tls: Option<Arc<ListenerTls>>,
    /// The proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// What started a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The gateway starting.
    Startup,
    /// A change of the module `<name>.wasm`.
    Plugin(String),
    /// A change of the config file (or SIGHUP).
    Config,
    /// The optimized build of `<name>.wasm`, compiled in the background,
    /// taking the place of the baseline build that served first.
    Optimized(String),
    /// `POST /reload` on the admin API: the config file, reloaded. With
    /// a fingerprint of the bearer token the call carried (`sha256:` and
    /// 16 hex digits), when the admin API has one.
    Admin(Option<String>),
    /// SIGHUP: the config file, reloaded.
    Signal,
}

impl Trigger {
    /// Lowercase name, as metrics and the admin API show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Plugin(_) => "plugin",
            Trigger::Config => "config",
            Trigger::Optimized(_) => "optimized",
            Trigger::Admin(_) => "admin",
            Trigger::Signal => "signal",
        }
    }

    /// The plugin it concerns, if one.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Trigger::Plugin(name) | Trigger::Optimized(name) => Some(name),
            _ => None,
        }
    }
}

impl Outcome {
    /// Lowercase name, as metrics and the admin API show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Removed => "removed",
            Outcome::Validated => "validated",
            Outcome::Waiting { .. } => "waiting",
            Outcome::Rejected { .. } => "rejected",
        }
    }
}

/// A module a reload changed (or tried to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleChange {
    /// The plugin.
    pub name: String,
    /// SHA-256 of the module that served before, if one did.
    pub previous: Option<String>,
    /// SHA-256 of the new module; `None` when it was removed.
    pub sha256: Option<String>,
}

/// One reload in the history the admin API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When it ended.
    pub time: SystemTime,
    /// What started it and how it ended.
    pub event: ReloadEvent,
    /// The modules it changed (or, refused, would have).
    pub modules: Vec<ModuleChange>,
}

/// What a module is, for the admin API.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    /// The plugin's name.
    pub name: String,
    /// SHA-256 of the module file, hex.
    pub sha256: String,
    /// Compiled: a route uses it; otherwise only validated.
    pub compiled: Option<Arc<CompiledPlugin>>,
    /// The routes that use it.
    pub routes: Vec<String>,
    /// The version the SDK stamped in it, if it has a stamp.
    pub version: Option<String>,
    /// The id of the trusted key that signed it, if it is signed.
    pub signer: Option<String>,
}

/// What a module's content says and who signed it.
#[derive(Debug, Clone, Default)]
struct ModuleMeta {
    version: Option<String>,
    signer: Option<String>,
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new generation is live.
    Applied {
        /// Its id.
        generation: u64,
        /// Time from reading the file to publishing.
        elapsed: Duration,
    },
    /// The file has the content already loaded; nothing to do.
    Unchanged,
    /// An unused module was removed.
    Removed,
    /// A module no route uses was checked (a valid component) and is
    /// compiled when a route uses it; no generation changed.
    Validated,
    /// A new module waits for its signature (`[signatures] required`);
    /// it is checked again when the signature comes, and refused if none
    /// comes within `wait_ms`.
    Waiting {
        /// What it waits for, in words for the log.
        reason: String,
    },
    /// Refused; the current generation keeps serving.
    Rejected {
        /// Why, in words for the log.
        reason: String,
    },
}

/// A reload and its outcome, as logged and as sent to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadEvent {
    /// What started it.
    pub trigger: Trigger,
    /// How it ended.
    pub outcome: Outcome,
}

struct Loaded {
    config: Arc<Config>,
    /// The compiled modules of the plugins routes use.
    modules: HashMap<String, Arc<CompiledPlugin>>,
    /// Modules no route uses: validated, not compiled (SHA-256 by name).
    /// Compiling costs memory (megabytes of code and compiler state) that
    /// an unused module should not.
    validated: HashMap<String, String>,
    /// New modules waiting for their signature: SHA-256 and until when.
    waiting: HashMap<String, (String, Instant)>,
    next_id: u64,
}

/// Holds the current generation and builds the next one.
pub struct Registry {
    current: ArcSwap<Generation>,
    loaded: Mutex<Loaded>,
    engine: Arc<PluginEngine>,
    services: Arc<HostServices>,
    runtime: Handle,
    config_path: PathBuf,
    events: broadcast::Sender<ReloadEvent>,
    /// The compiled-module cache, if it could be opened.
    cache: Option<Arc<ModuleCache>>,
    /// This registry, for the optimizer thread's jobs.
    me: Weak<Registry>,
    /// The queue of the thread that compiles optimized builds, one at a
    /// time at a low priority (compiling takes tens of MiB; a burst of new
    /// modules should not take them all at once).
    optimizer: mpsc::Sender<OptimizeJob>,
    /// The last reloads, newest last.
    history: Mutex<std::collections::VecDeque<HistoryEntry>>,
    /// Version and signer of each module loaded, by (name, SHA-256).
    /// Locked after `loaded` when both are.
    meta: Mutex<HashMap<(String, String), ModuleMeta>>,
    /// The audit trail, if kept.
    audit: Option<Arc<crate::audit::AuditLog>>,
    /// Where canary rollouts keep their outcomes and report.
    rollouts: Arc<RolloutBook>,
}

/// How many reloads the history keeps.
pub const HISTORY: usize = 100;

/// An optimized build to make: `bytes`, whose baseline build serves as
/// `name` in `registry`.
struct OptimizeJob {
    registry: Weak<Registry>,
    name: String,
    bytes: Vec<u8>,
}

/// Starts the thread that compiles optimized builds; it ends when the
/// registry, which holds the queue, is dropped.
fn spawn_optimizer() -> std::io::Result<mpsc::Sender<OptimizeJob>> {
    let (queue, jobs) = mpsc::channel::<OptimizeJob>();
    std::thread::Builder::new()
        .name("portcullis-compile".into())
        .spawn(move || {
            crate::plugin::engine::lower_thread_priority();
            for job in jobs {
                run_optimize_job(job);
            }
        })?;
    Ok(queue)
}

/// Compiles the optimized build of a job, unless its baseline build no
/// longer serves (replaced or removed meanwhile), and hands it to the
/// registry. The registry is not held while compiling.
fn run_optimize_job(job: OptimizeJob) {
    let Some(registry) = job.registry.upgrade() else {
        return;
    };
    let hash = crate::plugin::engine::content_hash(&job.bytes);
    if !registry.serves_baseline(&job.name, &hash) {
        return;
    }
    let (engine, cache) = (registry.engine.clone(), registry.cache.clone());
    drop(registry);
    let compiled = engine.compile(&job.name, &job.bytes, cache.as_ref());
    drop(engine);
    let Some(registry) = job.registry.upgrade() else {
        return;
    };
    match compiled {
        Ok(module) => {
            registry.take_optimized(&job.name, module);
        }
        Err(e) => tracing::error!(
            plugin = %job.name,
            "the optimized build failed, the baseline build keeps serving: {e}"
        ),
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("generation", &self.current.load().id)
            .field("config_path", &self.config_path)
            .finish()
    }
}

/// Module files in `dir`: `<name>.wasm` with a valid plugin name.
fn module_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(name) = plugin_name(&path) {
            found.push((name, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The plugin whose signature `path` is, if it is one (`key_auth.wasm.sig`).
pub fn signature_plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "sig" {
        return None;
    }
    plugin_name(&path.with_extension(""))
}

/// The plugin name of a module path, if it is one (`key_auth.wasm`).
pub fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    crate::config::check_plugin_name(stem).ok()?;
    Some(stem.to_owned())
}

impl Registry {
    /// Loads every module in the plugin directory and builds the first
    /// generation. Fails if any route cannot be served.
    pub fn start(
        config: Config,
        config_path: PathBuf,
        engine: Arc<PluginEngine>,
        services: Arc<HostServices>,
    ) -> anyhow::Result<Arc<Self>> {
        let started = Instant::now();
        let dir = config.plugins.directory.clone();
        let cache = open_cache(&config);
        let tiering = tiering(&config, &engine);
        let optimizer = spawn_optimizer()
            .map_err(|e| anyhow::anyhow!("cannot start the optimizer thread: {e}"))?;
        let files = module_files(&dir)
            .map_err(|e| anyhow::anyhow!("cannot read plugin directory {}: {e}", dir.display()))?;
        let used = used_plugins(&config);
        let mut modules = HashMap::new();
        let mut validated = HashMap::new();
        let mut meta = HashMap::new();
        let mut to_optimize = Vec::new();
        let mut problems = Vec::new();
        for (name, path) in files {
            if !used.contains(&name) {
                match validate_module(&engine, &config, &name, &path) {
                    Ok((hash, module_meta)) => {
                        log_validated(&name, &hash);
                        meta.insert((name.clone(), hash.clone()), module_meta);
                        validated.insert(name, hash);
                    }
                    Err(reason) => {
                        tracing::warn!(plugin = %name, "skipping unused plugin module: {reason}")
                    }
                }
                continue;
            }
            match load_module(&engine, &config, &name, &path, cache.as_ref(), tiering) {
                Ok((module, optimize, module_meta)) => {
                    log_module(&module, "loaded", &module_meta);
                    if let Some(bytes) = optimize {
                        to_optimize.push((name.clone(), bytes));
                    }
                    meta.insert((name.clone(), module.hash.clone()), module_meta);
                    modules.insert(name, Arc::new(module));
                }
                Err(reason) => problems.push(format!("plugin `{name}`: {reason}")),
            }
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("\n"));
        }
        let audit = match config.audit.file() {
            Some(path) => Some(Arc::new(
                crate::audit::AuditLog::open(&path)
                    .map_err(|e| anyhow::anyhow!("audit.file: {e}"))?,
            )),
            None => None,
        };
        let rollouts = Arc::new(RolloutBook::open(
            rollout_file(&config),
            audit.clone(),
            services.alerts.clone(),
        ));
        let config = Arc::new(config);
        let runtime = Handle::try_current().map_err(|_| {
            anyhow::anyhow!(
                "Registry::start must run inside a tokio runtime (on a blocking thread)"
            )
        })?;
        let generation = build(
            &config, &modules, None, &engine, &services, &rollouts, &runtime, 1,
        )
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
        let (events, _) = broadcast::channel(256);
        // The startup generation's history entry lists every module it loaded.
        let loaded_at_start = module_changes(&HashMap::new(), &modules);
        let registry = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            current: ArcSwap::from_pointee(generation),
            loaded: Mutex::new(Loaded {
                config,
                modules,
                validated,
                waiting: HashMap::new(),
                next_id: 2,
            }),
            engine,
            services,
            runtime,
            config_path,
            events,
            cache,
            optimizer,
            history: Mutex::new(std::collections::VecDeque::with_capacity(HISTORY)),
            meta: Mutex::new(meta),
            audit,
            rollouts,
        });
        registry.emit_changes(
            ReloadEvent {
                trigger: Trigger::Startup,
                outcome: Outcome::Applied {
                    generation: 1,
                    elapsed: started.elapsed(),
                },
            },
            loaded_at_start,
        );
        for (name, bytes) in to_optimize {
            registry.optimize(name, bytes);
        }
        Ok(registry)
    }

    /// The modules loaded now: those compiled (routes use them) and those
    /// only validated (no route uses them yet), each sorted by name.
    pub fn modules(&self) -> (Vec<String>, Vec<String>) {
        let loaded = self.lock();
        let mut compiled: Vec<String> = loaded.modules.keys().cloned().collect();
        let mut validated: Vec<String> = loaded.validated.keys().cloned().collect();
        compiled.sort();
        validated.sort();
        (compiled, validated)
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Reload events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.events.subscribe()
    }

    /// The config file this registry reloads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The plugin directory of the current config.
    pub fn plugin_directory(&self) -> PathBuf {
        self.current().config.plugins.directory.clone()
    }

    fn metas(&self) -> MutexGuard<'_, HashMap<(String, String), ModuleMeta>> {
        match self.meta.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        match self.loaded.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn emit(&self, event: ReloadEvent) -> ReloadEvent {
        self.emit_changes(event, Vec::new())
    }

    /// The reloads kept, oldest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        let history = match self.history.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        history.iter().cloned().collect()
    }

    /// Every module loaded now, sorted by name.
    pub fn module_infos(&self) -> Vec<ModuleInfo> {
        let loaded = self.lock();
        let users = |name: &str| -> Vec<String> {
            loaded
                .config
                .routes
                .iter()
                .filter(|r| r.plugins.iter().any(|p| p.name == name))
                .map(|r| r.name.clone())
                .collect()
        };
        let metas = self.metas();
        let meta = |name: &str, hash: &str| {
            metas
                .get(&(name.to_owned(), hash.to_owned()))
                .cloned()
                .unwrap_or_default()
        };
        let mut infos: Vec<ModuleInfo> = loaded
            .modules
            .iter()
            .map(|(name, module)| {
                let ModuleMeta { version, signer } = meta(name, &module.hash);
                ModuleInfo {
                    name: name.clone(),
                    sha256: module.hash.clone(),
                    compiled: Some(module.clone()),
                    routes: users(name),
                    version,
                    signer,
                }
            })
            .chain(loaded.validated.iter().map(|(name, hash)| {
                let ModuleMeta { version, signer } = meta(name, hash);
                ModuleInfo {
                    name: name.clone(),
                    sha256: hash.clone(),
                    compiled: None,
                    routes: Vec::new(),
                    version,
                    signer,
                }
            }))
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// Where sampled requests' spans go, if anywhere.
    pub fn spans(&self) -> Option<&Arc<crate::trace::otlp::SpanExport>> {
        self.services.spans.as_ref()
    }

    /// The metrics this registry's generations count into.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.services.metrics
    }

    fn emit_changes(&self, event: ReloadEvent, modules: Vec<ModuleChange>) -> ReloadEvent {
        self.emit_audited(event, modules, Vec::new())
    }

    /// Appends `event` to the audit trail: what changed (modules with
    /// their hashes, versions and signers; the config keys changed, never
    /// their values), what caused it, and how it ended. Changes to nothing
    /// and optimized builds of modules already loaded are not policy
    /// changes and are left out.
    fn audit(&self, event: &ReloadEvent, modules: &[ModuleChange], config_changes: Vec<String>) {
        let Some(audit) = &self.audit else { return };
        if matches!(event.outcome, Outcome::Unchanged)
            || matches!(event.trigger, Trigger::Optimized(_))
        {
            return;
        }
        let reason = match &event.outcome {
            Outcome::Rejected { reason } | Outcome::Waiting { reason } => Some(reason.clone()),
            _ => None,
        };
        let metas = self.metas();
        let described: Vec<serde_json::Value> = modules
            .iter()
            .map(|m| {
                let meta = m
                    .sha256
                    .as_ref()
                    .and_then(|hash| metas.get(&(m.name.clone(), hash.clone())));
                serde_json::json!({
                    "name": m.name,
                    "previous": m.previous,
                    "sha256": m.sha256,
                    "version": meta.and_then(|m| m.version.clone()),
                    "signer": meta.and_then(|m| m.signer.clone()),
                })
            })
            .collect();
        drop(metas);
        let mut cause = serde_json::json!({
            "kind": event.trigger.kind(),
            "plugin": event.trigger.plugin(),
        });
        if let Trigger::Admin(token) = &event.trigger {
            // Which token: a fingerprint taken when the call came, never
            // the token (and not the token a reload may have put in).
            cause["token"] = serde_json::json!(token);
        }
        audit.append(serde_json::json!({
            "generation": self.current.load().id,
            "result": event.outcome.kind(),
            "reason": reason,
            "cause": cause,
            "modules": described,
            "config_changes": config_changes,
        }));
    }

    /// The audit trail's file, if one is kept.
    pub fn audit_file(&self) -> Option<&Path> {
        self.audit.as_deref().map(crate::audit::AuditLog::path)
    }

    /// Emits `event`: metrics, history, log, audit trail (with the config
    /// keys it changed), subscribers.
    fn emit_audited(
        &self,
        event: ReloadEvent,
        modules: Vec<ModuleChange>,
        config_changes: Vec<String>,
    ) -> ReloadEvent {
        self.audit(&event, &modules, config_changes);
        self.services.metrics.reloaded(&event);
        if event.outcome != Outcome::Unchanged {
            let mut history = match self.history.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(HistoryEntry {
                time: SystemTime::now(),
                event: event.clone(),
                modules,
            });
        }
        let what = match &event.trigger {
            Trigger::Startup => "startup".to_owned(),
            Trigger::Plugin(name) => format!("plugin `{name}`"),
            Trigger::Config => format!("config {}", self.config_path.display()),
            Trigger::Optimized(name) => format!("plugin `{name}` (optimized build)"),
            Trigger::Admin(_) => format!("config {} (admin API)", self.config_path.display()),
            Trigger::Signal => format!("config {} (SIGHUP)", self.config_path.display()),
        };
        match &event.outcome {
            Outcome::Applied {
                generation,
                elapsed,
            } => tracing::info!(
                generation,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "{what}: generation {generation} is live"
            ),
            Outcome::Unchanged => tracing::debug!("{what}: unchanged"),
            Outcome::Removed => tracing::info!("{what}: removed (no route used it)"),
            Outcome::Validated => {
                tracing::info!("{what}: valid; no route uses it, so it is compiled when one does")
            }
            Outcome::Waiting { reason } => tracing::warn!("{what}: {reason}"),
            Outcome::Rejected { reason } => tracing::error!(
                generation = self.current.load().id,
                "{what} rejected, the current generation keeps serving: {reason}"
            ),
        }
        if event.outcome != Outcome::Unchanged {
            // A load may have compiled: give the compiler's freed memory back.
            crate::plugin::engine::release_freed_memory();
        }
        let _ = self.events.send(event.clone());
        event
    }

    /// Builds the next generation from `config` and `modules` and publishes
    /// it, or rejects the change and keeps the current one.
    fn rebuild(
        &self,
        loaded: &mut Loaded,
        config: Arc<Config>,
        modules: HashMap<String, Arc<CompiledPlugin>>,
        started: Instant,
        trigger: Trigger,
    ) -> ReloadEvent {
        let previous = self.current();
        let built = build(
            &config,
            &modules,
            Some(&previous),
            &self.engine,
            &self.services,
            &self.rollouts,
            &self.runtime,
            loaded.next_id,
        );
        match built {
            Ok(generation) => {
                let id = generation.id;
                // Modules no route uses any more are dropped (their memory
                // with them, once the old generation is gone) and kept as
                // validated.
                let used = used_plugins(&config);
                let (modules, unused): (HashMap<_, _>, HashMap<_, _>) = modules
                    .into_iter()
                    .partition(|(name, _)| used.contains(name));
                for (name, module) in unused {
                    loaded.validated.insert(name, module.hash.clone());
                }
                for name in modules.keys() {
                    loaded.validated.remove(name);
                }
                let changes = module_changes(&loaded.modules, &modules);
                let changed_keys = config_changes(&loaded.config, &config);
                loaded.config = config;
                loaded.modules = modules;
                loaded.next_id = id + 1;
                // Only the modules loaded now keep their version and
                // signer (one entry per module version ever loaded would
                // grow with every hot swap).
                self.metas().retain(|(name, hash), _| {
                    loaded.modules.get(name).is_some_and(|m| m.hash == *hash)
                        || loaded.validated.get(name) == Some(hash)
                });
                self.current.store(Arc::new(generation));
                self.emit_audited(
                    ReloadEvent {
                        trigger,
                        outcome: Outcome::Applied {
                            generation: id,
                            elapsed: started.elapsed(),
                        },
                    },
                    changes,
                    changed_keys,
                )
            }
            Err(problems) => {
                let changes = module_changes(&loaded.modules, &modules);
                self.emit_changes(
                    ReloadEvent {
                        trigger,
                        outcome: Outcome::Rejected {
                            reason: problems.join("; "),
                        },
                    },
                    changes,
                )
            }
        }
    }

    fn reject(&self, trigger: Trigger, reason: String) -> ReloadEvent {
        self.emit(ReloadEvent {
            trigger,
            outcome: Outcome::Rejected { reason },
        })
    }

    /// Queues the optimized build of `name`, whose baseline build serves
    /// now; when it is ready, and the baseline build of the same content
    /// still serves, it takes its place in a new generation. It also goes
    /// to the module cache.
    fn optimize(&self, name: String, bytes: Vec<u8>) {
        let job = OptimizeJob {
            registry: self.me.clone(),
            name,
            bytes,
        };
        if self.optimizer.send(job).is_err() {
            tracing::error!("the optimizer thread is gone: baseline builds keep serving");
        }
    }

    /// Whether the baseline build of the content `hash` serves as `name`.
    fn serves_baseline(&self, name: &str, hash: &str) -> bool {
        self.lock()
            .modules
            .get(name)
            .is_some_and(|m| m.tier == Tier::Baseline && m.hash == hash)
    }

    /// Puts the optimized build `module` in the place of the baseline build
    /// of the same content, if that still serves.
    fn take_optimized(&self, name: &str, module: CompiledPlugin) -> Option<ReloadEvent> {
        let started = Instant::now();
        let mut loaded = self.lock();
        let serving = loaded.modules.get(name)?;
        if serving.tier != Tier::Baseline || serving.hash != module.hash {
            return None;
        }
        let config = loaded.config.clone();
        let mut modules = loaded.modules.clone();
        let module = Arc::new(module);
        modules.insert(name.to_owned(), module.clone());
        let trigger = Trigger::Optimized(name.to_owned());
        let event = self.rebuild(&mut loaded, config, modules, started, trigger);
        if matches!(event.outcome, Outcome::Applied { .. }) {
            let meta = self
                .metas()
                .get(&(name.to_owned(), module.hash.clone()))
                .cloned()
                .unwrap_or_default();
            log_module(&module, "optimized build loaded", &meta);
        }
        Some(event)
    }

    /// Reacts to a change of `<name>.wasm` (or of its signature,
    /// `<name>.wasm.sig`) in the plugin directory: loads the new content,
    /// or handles its removal. Blocking (compiles).
    pub fn reload_plugin(&self, name: &str) -> ReloadEvent {
        let started = Instant::now();
        let trigger = Trigger::Plugin(name.to_owned());
        let mut loaded = self.lock();
        let config = loaded.config.clone();
        let path = config.plugins.directory.join(format!("{name}.wasm"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                loaded.waiting.remove(name);
                return self.remove_plugin(&mut loaded, name, trigger);
            }
            Err(e) => return self.reject(trigger, format!("cannot read {}: {e}", path.display())),
        };
        let hash = crate::plugin::engine::content_hash(&bytes);
        if loaded.modules.get(name).is_some_and(|m| m.hash == hash)
            || loaded.validated.get(name).is_some_and(|h| *h == hash)
        {
            loaded.waiting.remove(name);
            return self.emit(ReloadEvent {
                trigger,
                outcome: Outcome::Unchanged,
            });
        }
        let attempted = vec![ModuleChange {
            name: name.to_owned(),
            previous: loaded
                .modules
                .get(name)
                .map(|m| m.hash.clone())
                .or_else(|| loaded.validated.get(name).cloned()),
            sha256: Some(hash.clone()),
        }];
        // The signature is checked before anything else reads the module.
        let meta = match module_meta(&config, name, &path, &bytes, &hash) {
            Ok(meta) => {
                loaded.waiting.remove(name);
                meta
            }
            Err(e) if e.may_still_come() && config.signatures.wait_ms > 0 => {
                return self.wait_for_signature(&mut loaded, name, &hash, &e, attempted);
            }
            Err(e) => {
                loaded.waiting.remove(name);
                return self.refuse_module(trigger, name, &hash, e.to_string(), attempted);
            }
        };
        if !used_plugins(&config).iter().any(|u| u == name) {
            // No route uses it: checked, not compiled.
            return match self.engine.validate(&bytes) {
                Ok(()) => {
                    loaded.modules.remove(name);
                    self.metas().insert((name.to_owned(), hash.clone()), meta);
                    loaded.validated.insert(name.to_owned(), hash);
                    self.emit(ReloadEvent {
                        trigger,
                        outcome: Outcome::Validated,
                    })
                }
                Err(e) => self.reject(trigger, e.to_string()),
            };
        }
        let (module, optimize) = match tiered_compile(
            &self.engine,
            name,
            bytes,
            self.cache.as_ref(),
            tiering(&config, &self.engine),
        ) {
            Ok((module, optimize)) => (Arc::new(module), optimize),
            Err(e) => {
                let outcome = Outcome::Rejected {
                    reason: e.to_string(),
                };
                return self.emit_changes(ReloadEvent { trigger, outcome }, attempted);
            }
        };
        let mut modules = loaded.modules.clone();
        modules.insert(name.to_owned(), module.clone());
        self.metas()
            .insert((name.to_owned(), module.hash.clone()), meta.clone());
        let event = self.rebuild(&mut loaded, config, modules, started, trigger);
        if matches!(event.outcome, Outcome::Applied { .. }) {
            log_module(&module, "loaded", &meta);
            if let Some(bytes) = optimize {
                self.optimize(name.to_owned(), bytes);
            }
        }
        event
    }

    /// Module `name` (SHA-256 `hash`) has no signature of its own yet
    /// (`why`): it waits for one, up to `[signatures] wait_ms` from when
    /// it was first seen, and is checked again then; past that it is
    /// refused.
    fn wait_for_signature(
        &self,
        loaded: &mut Loaded,
        name: &str,
        hash: &str,
        why: &SignatureError,
        attempted: Vec<ModuleChange>,
    ) -> ReloadEvent {
        let trigger = Trigger::Plugin(name.to_owned());
        let wait = Duration::from_millis(loaded.config.signatures.wait_ms);
        let now = Instant::now();
        let deadline = match loaded.waiting.get(name) {
            Some((waiting, deadline)) if waiting == hash => *deadline,
            _ => {
                let deadline = now + wait;
                loaded
                    .waiting
                    .insert(name.to_owned(), (hash.to_owned(), deadline));
                self.check_again_at(name, deadline);
                deadline
            }
        };
        if now >= deadline {
            loaded.waiting.remove(name);
            let reason = format!(
                "{why}, and its own signature did not come within {} ms (signatures.wait_ms)",
                wait.as_millis()
            );
            return self.refuse_module(trigger, name, hash, reason, attempted);
        }
        self.emit(ReloadEvent {
            trigger,
            outcome: Outcome::Waiting {
                reason: format!(
                    "{why}; waiting up to {} ms for its signature, the loaded version keeps serving",
                    deadline.saturating_duration_since(now).as_millis()
                ),
            },
        })
    }

    /// Runs [`reload_plugin`](Self::reload_plugin) for `name` at `when`.
    fn check_again_at(&self, name: &str, when: Instant) {
        let me = self.me.clone();
        let name = name.to_owned();
        self.runtime.spawn(async move {
            tokio::time::sleep_until(when.into()).await;
            if let Some(registry) = me.upgrade() {
                let _ = tokio::task::spawn_blocking(move || registry.reload_plugin(&name)).await;
            }
        });
    }

    /// Refuses module `name` (SHA-256 `hash`) for a signature that does
    /// not hold: the reload is rejected (logged, counted, in the history)
    /// and a critical alert raised.
    fn refuse_module(
        &self,
        trigger: Trigger,
        name: &str,
        hash: &str,
        reason: String,
        attempted: Vec<ModuleChange>,
    ) -> ReloadEvent {
        self.services.alerts.send(crate::alerts::Alert {
            time_ms: self.services.clock.now_ms(),
            severity: crate::config::Severity::Critical,
            kind: "module-refused".into(),
            message: format!("module {name}.wasm refused: {reason}"),
            plugin: name.to_owned(),
            route: String::new(),
            labels: vec![
                ("sha256".into(), hash.to_owned()),
                ("reason".into(), reason.clone()),
            ],
        });
        self.emit_changes(
            ReloadEvent {
                trigger,
                outcome: Outcome::Rejected { reason },
            },
            attempted,
        )
    }

    fn remove_plugin(&self, loaded: &mut Loaded, name: &str, trigger: Trigger) -> ReloadEvent {
        let users: Vec<&str> = loaded
            .config
            .routes
            .iter()
            .filter(|r| r.plugins.iter().any(|p| p.name == name))
            .map(|r| r.name.as_str())
            .collect();
        if !users.is_empty() {
            let reason = format!(
                "{name}.wasm was removed but routes {} use it; the loaded version keeps serving (restore the file, or remove the plugin from those routes first)",
                users
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return self.reject(trigger, reason);
        }
        let validated = loaded.validated.remove(name).is_some();
        if loaded.modules.remove(name).is_none() && !validated {
            return self.emit(ReloadEvent {
                trigger,
                outcome: Outcome::Unchanged,
            });
        }
        self.emit(ReloadEvent {
            trigger,
            outcome: Outcome::Removed,
        })
    }

    /// Reloads the config file. Listeners, the plugin directory and the
    /// plugin limits are fixed at start; changes to them are reported and
    /// ignored until a restart. Blocking (may compile).
    pub fn reload_config(&self) -> ReloadEvent {
        self.reload_config_by(Trigger::Config)
    }

    /// [`reload_config`](Self::reload_config), started by `trigger`.
    pub fn reload_config_by(&self, trigger: Trigger) -> ReloadEvent {
        let started = Instant::now();
        let mut loaded = self.lock();
        let mut config = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => return self.reject(trigger, e.to_string()),
        };
        if let Err(reason) = keep_static_settings(&loaded.config, &mut config) {
            return self.reject(trigger, reason);
        }

        // Modules the new config uses that are not loaded yet (new files, or
        // files that failed before) are loaded now.
        let mut modules = loaded.modules.clone();
        let mut to_optimize = Vec::new();
        let mut metas = Vec::new();
        for name in used_plugins(&config) {
            let path = config.plugins.directory.join(format!("{name}.wasm"));
            if let Some(module) = modules.get(&name) {
                // Loaded already: under new `[signatures]` it must still
                // be signed by a key the new config trusts.
                let key = (name.clone(), module.hash.clone());
                let meta = self.metas().get(&key).cloned().unwrap_or_default();
                match recheck_signature(&config, &name, &path, &module.hash, meta) {
                    Ok(meta) => metas.push((key, meta)),
                    Err(e) => return self.reject(trigger, format!("plugin `{name}`: {e}")),
                }
                continue;
            }
            let tiering = tiering(&config, &self.engine);
            match load_module(
                &self.engine,
                &config,
                &name,
                &path,
                self.cache.as_ref(),
                tiering,
            ) {
                Ok((m, optimize, meta)) => {
                    if let Some(bytes) = optimize {
                        to_optimize.push((name.clone(), bytes));
                    }
                    metas.push(((name.clone(), m.hash.clone()), meta));
                    modules.insert(name, Arc::new(m));
                }
                Err(reason) => {
                    return self.reject(trigger, format!("plugin `{name}`: {reason}"));
                }
            }
        }
        self.metas().extend(metas);
        let event = self.rebuild(&mut loaded, Arc::new(config), modules, started, trigger);
        if matches!(event.outcome, Outcome::Applied { .. }) {
            for (name, bytes) in to_optimize {
                self.optimize(name, bytes);
            }
        }
        event
    }
}

/// Puts back in `new` what only a restart changes (bound sockets, the
/// engine's limits...). Refuses a config that would leave the admin
/// listener, which stays where it is bound, off loopback without a token.
fn keep_static_settings(old: &Config, new: &mut Config) -> Result<(), String> {
    // A listener's TLS settings and certificates change with a reload;
    // which sockets are bound changes only with a restart.
    let addresses = |c: &Config| c.listeners.iter().map(|l| l.address).collect::<Vec<_>>();
    if addresses(new) != addresses(old) {
        tracing::warn!(
            "config reload: listener addresses changed; they change only with a restart (the listeners stay as they were)"
        );
        new.listeners = old.listeners.clone();
    }
    if new.state_directory != old.state_directory {
        tracing::warn!("config reload: `state_directory` changes only with a restart");
        new.state_directory = old.state_directory.clone();
    }
    if new.workers != old.workers {
        tracing::warn!("config reload: `workers` changes only with a restart");
        new.workers = old.workers;
    }
    if new.plugins != old.plugins {
        tracing::warn!(
            "config reload: `[plugins]` changed; the plugin directory changes only with a restart"
        );
        new.plugins = old.plugins.clone();
    }
    let engine_limits = |c: &Config| {
        (
            c.limits.plugin_memory_mib,
            c.limits.plugin_timeout_ms,
            c.limits.max_instances,
        )
    };
    if engine_limits(new) != engine_limits(old) {
        tracing::warn!(
            "config reload: plugin_memory_mib, plugin_timeout_ms and max_instances change only with a restart"
        );
        new.limits.plugin_memory_mib = old.limits.plugin_memory_mib;
        new.limits.plugin_timeout_ms = old.limits.plugin_timeout_ms;
        new.limits.max_instances = old.limits.max_instances;
    }
    // Its certificates and TLS settings change with a reload; its address,
    // and whether it has TLS at all, only with a restart.
    let bound = |c: &Config| c.admin.as_ref().map(|a| (a.address, a.tls.is_some()));
    if bound(new) != bound(old) {
        tracing::warn!(
            "config reload: the admin listener's address, and whether it has TLS, change only with a restart"
        );
        match (new.admin.as_mut(), old.admin.as_ref()) {
            (Some(new), Some(old)) => {
                new.address = old.address;
                new.tls = old.tls.clone();
            }
            _ => new.admin = old.admin.clone(),
        }
    }
    if let Some(admin) = &new.admin
        && !admin.address.ip().is_loopback()
        && admin.token.is_none()
    {
        return Err(format!(
            "admin.token: the admin listener stays on {} (not loopback) until a restart, and must keep a bearer token",
            admin.address
        ));
    }
    if new.audit != old.audit {
        tracing::warn!("config reload: `[audit]` changes only with a restart");
        new.audit = old.audit.clone();
    }
    if new.tracing.otlp != old.tracing.otlp {
        tracing::warn!("config reload: `[tracing.otlp]` changes only with a restart");
        new.tracing.otlp = old.tracing.otlp.clone();
    }
    if new.log != old.log {
        tracing::warn!("config reload: `[log]` changes only with a restart");
        new.log = old.log.clone();
    }
    Ok(())
}

/// How the audit trail names a bearer token: `sha256:` and the first 16
/// hex digits of its SHA-256.
pub fn token_fingerprint(token: &str) -> String {
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    format!("sha256:{}", &digest[..16])
}

/// The config keys whose values differ between `old` and `new`, as paths
/// (`routes.api.plugins.key_auth.config.keys`, `upstreams.echo`,
/// `signatures`): never the values, so no secret is written.
fn config_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let sections: [(&str, bool); 9] = [
        ("listeners", old.listeners != new.listeners),
        (
            "trusted_proxies",
            old.trusted_proxies != new.trusted_proxies,
        ),
        (
            "forwarded_headers",
            old.forwarded_headers != new.forwarded_headers,
        ),
        ("limits", old.limits != new.limits),
        ("alerts", old.alerts != new.alerts),
        ("admin", old.admin != new.admin),
        ("tracing", old.tracing != new.tracing),
        ("signatures", old.signatures != new.signatures),
        ("plugins", old.plugins != new.plugins),
    ];
    changed.extend(
        sections
            .into_iter()
            .filter(|(_, differs)| *differs)
            .map(|(key, _)| key.to_owned()),
    );
    let mut upstreams: Vec<&String> = old.upstreams.keys().chain(new.upstreams.keys()).collect();
    upstreams.sort();
    upstreams.dedup();
    for name in upstreams {
        if old.upstreams.get(name) != new.upstreams.get(name) {
            changed.push(format!("upstreams.{name}"));
        }
    }
    let route = |c: &Config, name: &str| c.routes.iter().find(|r| r.name == name).cloned();
    let mut names: Vec<&String> = old
        .routes
        .iter()
        .chain(&new.routes)
        .map(|r| &r.name)
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        match (route(old, name), route(new, name)) {
            (Some(before), Some(after)) => {
                let strip = |r: &crate::config::RouteConfig| crate::config::RouteConfig {
                    plugins: Vec::new(),
                    ..r.clone()
                };
                if strip(&before) != strip(&after) {
                    changed.push(format!("routes.{name}"));
                }
                plugin_changes(name, &before.plugins, &after.plugins, &mut changed);
            }
            (None, Some(_)) => changed.push(format!("routes.{name} (added)")),
            (Some(_), None) => changed.push(format!("routes.{name} (removed)")),
            (None, None) => {}
        }
    }
    changed
}

/// The keys of route `route`'s plugin chain that changed.
fn plugin_changes(
    route: &str,
    before: &[crate::config::RoutePlugin],
    after: &[crate::config::RoutePlugin],
    changed: &mut Vec<String>,
) {
    let order =
        |c: &[crate::config::RoutePlugin]| c.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    if order(before) != order(after) {
        changed.push(format!("routes.{route}.plugins"));
    }
    for plugin in after {
        let Some(old) = before.iter().find(|p| p.name == plugin.name) else {
            continue;
        };
        let mut keys: Vec<&String> = old.config.keys().chain(plugin.config.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if old.config.get(key) != plugin.config.get(key) {
                changed.push(format!(
                    "routes.{route}.plugins.{}.config.{key}",
                    plugin.name
                ));
            }
        }
        let settings = |p: &crate::config::RoutePlugin| crate::config::RoutePlugin {
            config: Default::default(),
            ..p.clone()
        };
        if settings(old) != settings(plugin) {
            changed.push(format!("routes.{route}.plugins.{}", plugin.name));
        }
    }
}

/// The modules that differ between `before` and `after`.
fn module_changes(
    before: &HashMap<String, Arc<CompiledPlugin>>,
    after: &HashMap<String, Arc<CompiledPlugin>>,
) -> Vec<ModuleChange> {
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let previous = before.get(name).map(|m| m.hash.clone());
            let sha256 = after.get(name).map(|m| m.hash.clone());
            (previous != sha256).then(|| ModuleChange {
                name: name.clone(),
                previous,
                sha256,
            })
        })
        .collect()
}

fn used_plugins(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .routes
        .iter()
        .flat_map(|r| &r.plugins)
        .flat_map(|p| {
            let shadow = p.shadow.as_ref().and_then(|s| s.module.clone());
            let canary = p.canary.as_ref().and_then(|c| c.module.clone());
            std::iter::once(p.name.clone()).chain(shadow).chain(canary)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Opens the compiled-module cache of `config`; without one (a state
/// directory that cannot be made, a key others can read) every start
/// compiles every module, which is logged.
fn open_cache(config: &Config) -> Option<Arc<ModuleCache>> {
    let (state, dir) = (config.state_directory(), config.cache_directory());
    match ModuleCache::open(&state, &dir) {
        Ok(cache) => Some(Arc::new(cache)),
        Err(e) => {
            tracing::warn!(
                "the compiled-module cache is off ({e}); every start compiles every module"
            );
            None
        }
    }
}

/// Whether modules never compiled before serve a baseline build first.
fn tiering(config: &Config, engine: &PluginEngine) -> bool {
    config.plugins.baseline_compiler && engine.has_baseline()
}

/// Reads the module at `path`, checks its signature as `config` says, and
/// compiles it (see [`tiered_compile`]).
fn load_module(
    engine: &PluginEngine,
    config: &Config,
    name: &str,
    path: &Path,
    cache: Option<&Arc<ModuleCache>>,
    tiering: bool,
) -> Result<(CompiledPlugin, Option<Vec<u8>>, ModuleMeta), String> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("no module {} in the plugin directory", path.display())
        }
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    let hash = crate::plugin::engine::content_hash(&bytes);
    let meta = module_meta(config, name, path, &bytes, &hash).map_err(|e| e.to_string())?;
    let (module, optimize) =
        tiered_compile(engine, name, bytes, cache, tiering).map_err(|e| e.to_string())?;
    Ok((module, optimize, meta))
}

/// Whether loaded module `name` (SHA-256 `hash`, `meta` as it was checked)
/// passes `config`'s `[signatures]`: its signer is still trusted, or its
/// signature file, read again, holds. Its meta, with the signer now.
fn recheck_signature(
    config: &Config,
    name: &str,
    path: &Path,
    hash: &str,
    meta: ModuleMeta,
) -> Result<ModuleMeta, SignatureError> {
    let signatures = &config.signatures;
    let trusted = |id: &String| signatures.keys.iter().any(|k| k.id == *id);
    if meta.signer.as_ref().is_some_and(trusted) {
        return Ok(meta);
    }
    let checked = crate::signing::verify(
        path,
        name,
        meta.version.as_deref().unwrap_or(""),
        hash,
        &signatures.keys,
    );
    match checked {
        Ok(key_id) => Ok(ModuleMeta {
            signer: Some(key_id),
            ..meta
        }),
        Err(e) if signatures.required => Err(e),
        Err(_) => Ok(ModuleMeta {
            signer: None,
            ..meta
        }),
    }
}

/// The version stamped in module `name` (at `path`, content `bytes` of
/// SHA-256 `hash`) and who signed it. With `[signatures] required`, a
/// module without a valid signature from a trusted key is an error;
/// without, a signature that does not hold is ignored (logged).
fn module_meta(
    config: &Config,
    name: &str,
    path: &Path,
    bytes: &[u8],
    hash: &str,
) -> Result<ModuleMeta, SignatureError> {
    let version = crate::plugin::stamp::read(bytes).map(|s| s.version);
    let signatures = &config.signatures;
    if !signatures.required && signatures.keys.is_empty() {
        // Signatures are not in use: a `.sig` beside the module is not
        // this gateway's business.
        return Ok(ModuleMeta {
            version,
            signer: None,
        });
    }
    let checked = crate::signing::verify(
        path,
        name,
        version.as_deref().unwrap_or(""),
        hash,
        &signatures.keys,
    );
    let signer = match checked {
        Ok(key_id) => Some(key_id),
        Err(e) if signatures.required => return Err(e),
        Err(e) if e.is_missing() => None,
        Err(e) => {
            tracing::warn!(plugin = %name, "signature ignored (signatures are not required): {e}");
            None
        }
    };
    Ok(ModuleMeta { version, signer })
}

/// A module ready to serve: its optimized build from the cache if there is
/// one; else, with `tiering`, a baseline (Winch) build, several times
/// faster to make, returned with the bytes from which the optimized build
/// is to be made in the background; else the optimized build. A module the
/// baseline compiler refuses gets the optimized compiler's verdict.
fn tiered_compile(
    engine: &PluginEngine,
    name: &str,
    bytes: Vec<u8>,
    cache: Option<&Arc<ModuleCache>>,
    tiering: bool,
) -> Result<(CompiledPlugin, Option<Vec<u8>>), PluginError> {
    if let Some(cached) = engine.from_cache(name, &bytes, cache) {
        return cached.map(|module| (module, None));
    }
    if tiering && let Some(Ok(module)) = engine.compile_baseline(name, &bytes) {
        return Ok((module, Some(bytes)));
    }
    engine
        .compile(name, &bytes, cache)
        .map(|module| (module, None))
}

/// Reads and validates the module at `path` without compiling it (its
/// signature first, as `config` says); its SHA-256, version and signer.
fn validate_module(
    engine: &PluginEngine,
    config: &Config,
    name: &str,
    path: &Path,
) -> Result<(String, ModuleMeta), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let hash = crate::plugin::engine::content_hash(&bytes);
    let meta = module_meta(config, name, path, &bytes, &hash).map_err(|e| e.to_string())?;
    engine.validate(&bytes).map_err(|e| e.to_string())?;
    Ok((hash, meta))
}

fn log_validated(name: &str, hash: &str) {
    tracing::info!(
        plugin = %name,
        sha256 = %&hash[..12],
        "plugin module valid; no route uses it, so it is compiled when one does"
    );
}

fn log_module(module: &CompiledPlugin, what: &str, meta: &ModuleMeta) {
    tracing::info!(
        plugin = %module.name,
        sha256 = %&module.hash[..12],
        version = meta.version.as_deref().unwrap_or("-"),
        signer = meta.signer.as_deref().unwrap_or("-"),
        bytes = module.size,
        from_cache = module.from_cache,
        tier = ?module.tier,
        load_ms = module.load_time.as_secs_f64() * 1000.0,
        "plugin module {what}"
    );
}

/// Whether two pools have the same outbound grant (the same grant object:
/// an unchanged grant is carried over from one generation to the next).
fn same_grant(a: Option<&Arc<Outbound>>, b: Option<&Arc<Outbound>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Builds a generation: routing table, upstreams and one initialised pool
/// per plugin per route. Pools and upstreams whose inputs did not change
/// are taken over from `previous`. Every problem is collected. Runs on a
/// blocking thread; `init` calls are driven on `runtime`.
#[allow(clippy::too_many_arguments)]
fn build(
    config: &Arc<Config>,
    modules: &HashMap<String, Arc<CompiledPlugin>>,
    previous: Option<&Generation>,
    engine: &Arc<PluginEngine>,
    services: &Arc<HostServices>,
    rollouts: &Arc<RolloutBook>,
    runtime: &Handle,
    id: u64,
) -> Result<Generation, Vec<String>> {
    let mut problems = Vec::new();
    let router = Router::build(&config.routes).unwrap_or_else(|ps| {
        problems.extend(ps.into_iter().map(|p| format!("{}: {}", p.key, p.message)));
        Router::default()
    });

    let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
    for (name, up) in &config.upstreams {
        let before = |same: &dyn Fn(&Upstream) -> bool| {
            previous.and_then(|g| {
                g.routes
                    .iter()
                    .map(|r| &r.upstream)
                    .find(|u| same(u))
                    .cloned()
            })
        };
        let reused = before(&|u| u.serves(name, up));
        match reused.map(Ok).unwrap_or_else(|| {
            let earlier = before(&|u| u.name() == name);
            Upstream::new(name, up, Some(services.alerts.clone()), earlier.as_deref()).map(Arc::new)
        }) {
            Ok(u) => {
                upstreams.insert(name, u);
            }
            Err(e) => problems.push(e),
        }
    }

    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let name: Arc<str> = route.name.as_str().into();
        let mut chain = Vec::with_capacity(route.plugins.len());
        for (i, link) in route.plugins.iter().enumerate() {
            let Some(module) = modules.get(&link.name) else {
                problems.push(format!(
                    "route `{}` plugin `{}`: no module {}.wasm in {}",
                    route.name,
                    link.name,
                    link.name,
                    config.plugins.directory.display()
                ));
                continue;
            };
            let limits = CallLimits {
                timeout_ms: link.timeout_ms.unwrap_or(config.limits.plugin_timeout_ms),
                max_concurrent: link.max_concurrent_calls,
                queue_timeout_ms: link.queue_timeout_ms,
            };
            let config_json = match serde_json::to_string(&link.config) {
                Ok(json) => json,
                Err(e) => {
                    problems.push(format!(
                        "route `{}` plugin `{}`: config: {e}",
                        route.name, link.name
                    ));
                    continue;
                }
            };
            let plugin: Arc<str> = link.name.as_str().into();
            let same_link = || {
                previous
                    .and_then(|g| g.routes.iter().find(|r| r.name == name))
                    .and_then(|r| r.chain.get(i))
            };
            let outbound = match &link.outbound {
                None => None,
                Some(grant) => {
                    let before = same_link()
                        .and_then(|l| l.pool.outbound())
                        .filter(|o| o.same(grant));
                    match before.cloned().map(Ok).unwrap_or_else(|| {
                        Outbound::new(
                            plugin.clone(),
                            name.clone(),
                            grant,
                            &services.metrics,
                            engine,
                        )
                    }) {
                        Ok(outbound) => Some(outbound),
                        Err(e) => {
                            problems.push(format!(
                                "route `{}` plugin `{}`: outbound.{e}",
                                route.name, link.name
                            ));
                            continue;
                        }
                    }
                }
            };
            let reused = same_link()
                .filter(|l| {
                    Arc::ptr_eq(l.pool.plugin(), module)
                        && l.pool.config_json() == config_json
                        && l.pool.limits() == limits
                        && same_grant(l.pool.outbound(), outbound.as_ref())
                })
                .map(|l| l.pool.clone());
            let role = PoolRole {
                shadow: false,
                outbound: outbound.clone(),
            };
            let pool = match reused {
                Some(pool) => pool,
                None => match runtime.block_on(PluginPool::with_role(
                    engine.clone(),
                    module.clone(),
                    name.clone(),
                    config_json,
                    services.clone(),
                    limits,
                    role,
                )) {
                    Ok(pool) => pool,
                    Err(e) => {
                        problems.push(describe_pool_error(&route.name, &link.name, &e));
                        continue;
                    }
                },
            };
            let candidate = CandidateParts {
                config,
                modules,
                link,
                route: &name,
                plugin: &plugin,
                limits,
                engine,
                services,
                runtime,
                outbound: &outbound,
            };
            let shadow = match &link.shadow {
                None => None,
                Some(shadow) => {
                    let before = same_link().and_then(|l| l.shadow.as_ref());
                    match build_shadow(&candidate, shadow, before) {
                        Ok(shadow) => Some(shadow),
                        Err(problem) => {
                            problems.push(problem);
                            continue;
                        }
                    }
                }
            };
            let canary = match &link.canary {
                None => None,
                Some(canary) => {
                    let before = same_link().and_then(|l| l.canary.as_ref());
                    match build_canary(&candidate, canary, before, rollouts) {
                        Ok(canary) => Some(canary),
                        Err(problem) => {
                            problems.push(problem);
                            continue;
                        }
                    }
                }
            };
            chain.push(ChainLink {
                metrics: services.metrics.link(&plugin, &name),
                plugin,
                on_error: link.on_error,
                hooks: pool.hooks(),
                pool,
                shadow,
                canary,
            });
        }
        let Some(upstream) = upstreams.get(route.upstream.as_str()).cloned() else {
            problems.push(format!(
                "route `{}`: unknown upstream `{}`",
                route.name, route.upstream
            ));
            continue;
        };
        routes.push(RouteRuntime {
            metrics: services
                .metrics
                .route(&name, &route.upstream, route.metrics_consumer_label),
            request_body: chain
                .iter()
                .any(|l| l.all_hooks().contains(Hooks::REQUEST_BODY)),
            response_body: chain
                .iter()
                .any(|l| l.all_hooks().contains(Hooks::RESPONSE_BODY)),
            name,
            upstream,
            chain,
            websocket: route.websocket,
            timeout: route.timeout_ms.map(Duration::from_millis),
            max_request_body: route
                .max_request_body_bytes
                .unwrap_or(config.limits.max_request_body_bytes),
            upgrade_idle_timeout: Duration::from_millis(route.upgrade_idle_timeout_ms),
            upstream_overrides: RouteOverrides {
                timeout_ms: route.upstream_timeout_ms,
                retries: route.retries.clone(),
            },
        });
    }
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for (i, listener) in config.listeners.iter().enumerate() {
        let tls = match &listener.tls {
            None => None,
            Some(settings) => {
                let before = previous
                    .and_then(|g| g.listeners.get(i))
                    .and_then(|l| l.tls.as_ref());
                match ListenerTls::load(i, settings, before, SystemTime::now()) {
                    Ok(loaded) => Some(loaded),
                    Err(ps) => {
                        problems.extend(ps);
                        None
                    }
                }
            }
        };
        listeners.push(Arc::new(ListenerRuntime {
            tls,
            h2c: listener.h2c,
            http2: listener.http2,
            http1: listener.http1,
        }));
    }
    let admin_tls = match config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        None => None,
        Some(settings) => {
            let before = previous.and_then(|g| g.admin_tls.as_ref());
            match ListenerTls::load_named("admin.tls", settings, before, SystemTime::now()) {
                Ok(loaded) => Some(loaded),
                Err(ps) => {
                    problems.extend(ps);
                    None
                }
            }
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Generation {
        id,
        config: config.clone(),
        router,
        routes,
        listeners,
        admin_tls,
        trusted_proxies: config
            .trusted_proxies
            .iter()
            .filter_map(|p| crate::config::parse_network(p))
            .collect(),
    })
}

/// What a candidate (a shadow's or a canary's) is built from.
struct CandidateParts<'a> {
    config: &'a Config,
    modules: &'a HashMap<String, Arc<CompiledPlugin>>,
    link: &'a crate::config::RoutePlugin,
    route: &'a Arc<str>,
    plugin: &'a Arc<str>,
    limits: CallLimits,
    engine: &'a Arc<PluginEngine>,
    services: &'a Arc<HostServices>,
    runtime: &'a Handle,
    /// The live plugin's outbound grant, which its candidates share.
    outbound: &'a Option<Arc<Outbound>>,
}

impl CandidateParts<'_> {
    /// The candidate's module (`module`, else the live plugin's) and its
    /// config as JSON: the live config with `changes` in place. `what`
    /// names the table in errors (`shadow`, `canary`).
    fn resolve(
        &self,
        what: &str,
        module: Option<&str>,
        changes: &toml::Table,
    ) -> Result<(&Arc<CompiledPlugin>, String), String> {
        let (route, plugin) = (self.route, self.plugin);
        let name = module.unwrap_or(&self.link.name);
        let Some(module) = self.modules.get(name) else {
            return Err(format!(
                "route `{route}` plugin `{plugin}`: {what}.module: no module {name}.wasm in {}",
                self.config.plugins.directory.display()
            ));
        };
        let mut config = self.link.config.clone();
        for (key, value) in changes {
            config.insert(key.clone(), value.clone());
        }
        let json = serde_json::to_string(&config)
            .map_err(|e| format!("route `{route}` plugin `{plugin}`: {what}.config: {e}"))?;
        Ok((module, json))
    }

    /// Whether `pool` runs the same candidate: `module`'s content (in any
    /// build of it), with `json`, under this link's limits.
    fn same_candidate(&self, pool: &PluginPool, module: &CompiledPlugin, json: &str) -> bool {
        pool.plugin().hash == module.hash
            && pool.config_json() == json
            && pool.limits() == self.limits
            && same_grant(pool.outbound(), self.outbound.as_ref())
    }

    /// A new pool for the candidate; its `init` checks the config.
    fn pool(
        &self,
        what: &str,
        module: &Arc<CompiledPlugin>,
        json: String,
        shadow: bool,
    ) -> Result<Arc<PluginPool>, String> {
        let pool = PluginPool::with_role(
            self.engine.clone(),
            module.clone(),
            self.route.clone(),
            json,
            self.services.clone(),
            self.limits,
            PoolRole {
                shadow,
                outbound: self.outbound.clone(),
            },
        );
        self.runtime.block_on(pool).map_err(|e| {
            format!(
                "route `{}` plugin `{}`: {what}: {e}",
                self.route, self.plugin
            )
        })
    }
}

/// A link's shadow candidate: the one before if it is the same, else a
/// new pool and task.
fn build_shadow(
    parts: &CandidateParts<'_>,
    shadow: &crate::config::ShadowConfig,
    before: Option<&Arc<Shadow>>,
) -> Result<Arc<Shadow>, String> {
    let (module, json) = parts.resolve("shadow", shadow.module.as_deref(), &shadow.config)?;
    // The same candidate (module content, config, limits, settings) keeps
    // its counts, even on a new build of its module.
    let same = before.filter(|b| {
        parts.same_candidate(b.pool(), module, &json)
            && b.queue() == shadow.queue
            && b.stats.sample_cap() == shadow.samples
    });
    if let Some(before) = same.filter(|b| Arc::ptr_eq(b.pool().plugin(), module)) {
        return Ok(before.clone());
    }
    let pool = parts.pool("shadow", module, json, true)?;
    if let Some(before) = same {
        return Ok(Shadow::start(
            pool,
            parts.link.on_error,
            shadow.queue,
            before.stats.clone(),
            parts.runtime,
        ));
    }
    let stats = ShadowStats::new(
        parts.route.clone(),
        parts.plugin.clone(),
        module.name.clone(),
        module.hash.clone(),
        shadow.config.keys().cloned().collect(),
        shadow.samples,
        parts.services.metrics.shadow(parts.plugin, parts.route),
        parts.services.clock.clone(),
    );
    Ok(Shadow::start(
        pool,
        parts.link.on_error,
        shadow.queue,
        Arc::new(stats),
        parts.runtime,
    ))
}

/// Where rollouts keep their outcomes: `rollouts.json` in the state
/// directory, if it can be made; else nowhere (logged).
fn rollout_file(config: &Config) -> Option<PathBuf> {
    let dir = config.state_directory();
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir.join("rollouts.json")),
        Err(e) => {
            tracing::warn!(
                "cannot make the state directory {}: {e}; canary outcomes last until the gateway stops",
                dir.display()
            );
            None
        }
    }
}

/// A link's canary: the one before if it is the same, else a new pool
/// starting where the book says this candidate's rollout stands.
fn build_canary(
    parts: &CandidateParts<'_>,
    canary: &crate::config::CanaryConfig,
    before: Option<&Arc<Canary>>,
    rollouts: &Arc<RolloutBook>,
) -> Result<Arc<Canary>, String> {
    let (module, json) = parts.resolve("canary", canary.module.as_deref(), &canary.config)?;
    // The same candidate (module content, config, limits, settings) keeps
    // its place, even on a new build of its module.
    let same =
        before.filter(|b| parts.same_candidate(b.pool(), module, &json) && b.settings() == canary);
    if let Some(before) = same.filter(|b| Arc::ptr_eq(b.pool().plugin(), module)) {
        return Ok(before.clone());
    }
    let config_hash = crate::plugin::engine::content_hash(json.as_bytes());
    let pool = parts.pool("canary", module, json, false)?;
    if let Some(before) = same {
        return Ok(Canary::carry(pool, before));
    }
    let (route, plugin) = (parts.route, parts.plugin);
    let info = CanaryInfo {
        key: format!("{route}/{plugin}/{}/{config_hash}", module.hash),
        route: route.clone(),
        plugin: plugin.clone(),
        module: module.name.clone(),
        sha256: module.hash.clone(),
        config_keys: canary.config.keys().cloned().collect(),
    };
    Ok(Canary::new(
        pool,
        canary.clone(),
        info,
        rollouts.clone(),
        parts.services.clock.clone(),
    ))
}

fn describe_pool_error(route: &str, plugin: &str, e: &PluginError) -> String {
    format!("route `{route}` plugin `{plugin}`: {e}")
}
