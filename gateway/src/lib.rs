//! Portcullis: a programmable API gateway. A hyper reverse proxy runs every
//! request through sandboxed WebAssembly policy plugins that are hot-loaded
//! from a directory.
//!
//! [`Gateway`] builds and starts the whole gateway in-process (the binary is
//! a thin CLI around it), which is also how the end-to-end tests run it:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let gateway = portcullis::Gateway::builder("portcullis.toml").start().await?;
//! println!("listening on {:?}", gateway.local_addrs());
//! gateway.shutdown().await;
//! # Ok(()) }
//! ```

pub mod access_log;
pub mod admin;
pub mod alerts;
pub mod audit;
pub mod body;
pub mod cases;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod forward;
pub mod ipfmt;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod plugin;
pub mod registry;
pub mod rollout;
pub mod router;
pub mod scaffold;
pub mod server;
pub mod shadow;
pub mod signing;
pub mod state;
pub mod ticker;
pub mod trace;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::alerts::AlertSender;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::plugin::engine::EngineLimits;
use crate::plugin::{HostServices, PluginEngine};
use crate::registry::{Registry, ReloadEvent};
use crate::state::{Budget, InMemoryStore, StoreBackend};

/// How often expired entries are swept from the shared store.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the dashboard's series are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a stopping gateway waits for its last spans to be exported.
const SPAN_FLUSH: Duration = Duration::from_secs(3);

/// Entry point: configure, then [`GatewayBuilder::start`].
#[derive(Debug)]
pub struct Gateway;

impl Gateway {
    /// A builder for a gateway configured by the TOML file at `config_path`.
    pub fn builder(config_path: impl Into<PathBuf>) -> GatewayBuilder {
        GatewayBuilder {
            config_path: config_path.into(),
            clock: Arc::new(SystemClock),
            offline: None,
        }
    }
}

/// Options beyond the config file.
pub struct GatewayBuilder {
    config_path: PathBuf,
    clock: Arc<dyn Clock>,
    /// The stand-in upstream of an offline run.
    offline: Option<SocketAddr>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// The clock plugins and the shared store see (tests use a manual one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs the config offline, every upstream group replaced by the one
    /// server `upstream` (see [`Config::go_offline`]): what `portcullis
    /// test` loads.
    pub fn offline(mut self, upstream: SocketAddr) -> Self {
        self.offline = Some(upstream);
        self
    }

    /// Loads the config and every plugin the way [`start`](Self::start)
    /// does, without binding anything; returns the first generation's
    /// registry. What `portcullis check` runs.
    pub async fn check(self) -> anyhow::Result<Arc<Registry>> {
        Ok(self.load().await?.registry)
    }

    async fn load(self) -> anyhow::Result<Loaded> {
        let config_path = self.config_path;
        let config = match self.offline {
            Some(upstream) => Config::load_with(&config_path, |c| c.go_offline(upstream))?,
            None => Config::load(&config_path)?,
        };

        let limits = &config.limits;
        let engine = Arc::new(
            PluginEngine::new(EngineLimits {
                memory_mib: limits.plugin_memory_mib,
                timeout_ms: limits.plugin_timeout_ms,
                max_instances: limits.max_instances,
            })
            .context("cannot create the WebAssembly engine")?,
        );
        let store: Arc<dyn StoreBackend> = Arc::new(InMemoryStore::new(
            Budget {
                max_entries: limits.state_max_entries,
                max_bytes: limits.state_max_bytes,
            },
            self.clock.clone(),
        ));
        let (alerts, alert_rx) = alerts::queue(limits.alert_queue);
        let sources = Arc::new(std::sync::OnceLock::new());
        let spans = match &config.tracing.otlp {
            Some(otlp) => Some(trace::otlp::SpanExport::start(otlp).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let services = Arc::new(HostServices {
            store: store.clone(),
            alerts: alerts.clone(),
            clock: self.clock,
            metrics: Arc::new(metrics::Metrics::new(sources.clone())),
            spans,
        });
        let registry = tokio::task::spawn_blocking(move || {
            Registry::start(config, config_path, engine, services)
        })
        .await
        .context("plugin loading task failed")??;
        let _ = sources.set(metrics::Sources {
            registry: Arc::downgrade(&registry),
            store: store.clone(),
            alerts: alerts.clone(),
        });
        Ok(Loaded {
            registry,
            store,
            alerts,
            alert_rx,
        })
    }

    /// Loads the config and every plugin, builds the first generation, and
    /// only then binds the listeners and starts serving. Any error (bad
    /// config, a module that fails to load, a plugin that rejects its route
    /// config, a port in use) is returned before a request is served.
    pub async fn start(self) -> anyhow::Result<GatewayHandle> {
        let Loaded {
            registry,
            store,
            alerts,
            alert_rx,
        } = self.load().await?;
        let config = registry.current().config.clone();
        let listeners_config = config.listeners.clone();
        let watch_files = config.plugins.watch;

        let mut listeners = Vec::with_capacity(listeners_config.len());
        for listener in &listeners_config {
            let bound = TcpListener::bind(listener.address)
                .await
                .with_context(|| format!("cannot listen on {}", listener.address))?;
            listeners.push(bound);
        }
        let admin_listener = match &config.admin {
            None => None,
            Some(admin) => {
                let bound = TcpListener::bind(admin.address).await.with_context(|| {
                    format!("cannot listen on {} (admin.address)", admin.address)
                })?;
                Some((bound, admin.tls.is_some()))
            }
        };

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let addr = listener.local_addr()?;
            let tls = listeners_config[index].tls.is_some();
            tracing::info!(%addr, tls, "listening");
            addrs.push(addr);
            tasks.push(tokio::spawn(server::serve(
                listener,
                index,
                listeners_config[index].max_connections,
                registry.clone(),
                shutdown_rx.clone(),
            )));
        }
        if watch_files {
            tasks.push(registry::watch::spawn(
                registry.clone(),
                shutdown_rx.clone(),
            )?);
        }
        tasks.push(tokio::spawn(sweep(store.clone(), shutdown_rx.clone())));
        tasks.push(tokio::spawn(ticker::run(
            registry.clone(),
            shutdown_rx.clone(),
        )));
        let current = registry.clone();
        let sink = tokio::spawn(alerts::run(alert_rx, move || {
            current.current().config.clone()
        }));

        let lifecycle = Arc::new(admin::Lifecycle::default());
        let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
        let mut admin_tasks = Vec::new();
        let mut admin_addr = None;
        if let Some((listener, tls)) = admin_listener {
            let addr = listener.local_addr()?;
            tracing::info!(%addr, tls, "admin listening (metrics, API, dashboard)");
            admin_addr = Some(addr);
            let sampler = Arc::new(admin::Sampler::new(SAMPLE_INTERVAL));
            let state = Arc::new(admin::Admin {
                registry: registry.clone(),
                alerts: alerts.clone(),
                listeners: addrs.clone(),
                lifecycle: lifecycle.clone(),
                sampler: sampler.clone(),
            });
            admin_tasks.push(tokio::spawn(
                sampler.run(registry.clone(), admin_shutdown_rx.clone()),
            ));
            admin_tasks.push(tokio::spawn(admin::serve(
                listener,
                state,
                admin_shutdown_rx,
            )));
        }
        lifecycle.set_ready();

        Ok(GatewayHandle {
            addrs,
            admin_addr,
            registry,
            store,
            alerts,
            shutdown,
            tasks,
            sink,
            lifecycle,
            admin_shutdown,
            admin_tasks,
        })
    }
}

struct Loaded {
    registry: Arc<Registry>,
    store: Arc<dyn StoreBackend>,
    alerts: AlertSender,
    alert_rx: alerts::AlertReceiver,
}

async fn sweep(store: Arc<dyn StoreBackend>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => { store.sweep(); }
            _ = shutdown.changed() => break,
        }
    }
}

/// A running gateway.
pub struct GatewayHandle {
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    store: Arc<dyn StoreBackend>,
    alerts: AlertSender,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sink: JoinHandle<()>,
    lifecycle: Arc<admin::Lifecycle>,
    /// The admin listener stops after the others have drained, so that
    /// `/readyz` says so meanwhile.
    admin_shutdown: watch::Sender<bool>,
    admin_tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("addrs", &self.addrs)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin listener's bound address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The registry holding the current generation.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The id of the generation serving now.
    pub fn generation(&self) -> u64 {
        self.registry.current().id
    }

    /// Reload events (module and config changes) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.registry.subscribe()
    }

    /// The shared plugin store.
    pub fn store(&self) -> &Arc<dyn StoreBackend> {
        &self.store
    }

    /// Alerts dropped because the queue was full.
    pub fn alerts_dropped(&self) -> u64 {
        self.alerts.dropped()
    }

    /// The alert pipeline's counters: delivered, failed and dropped alerts.
    pub fn alert_counts(&self) -> alerts::AlertCounts {
        self.alerts.counts()
    }

    /// The last alerts the sinks took, oldest first.
    pub fn recent_alerts(&self) -> Vec<alerts::Alert> {
        self.alerts.recent()
    }

    /// Each alert sink's counters (`log`, `webhooks[<index>] <host>`).
    pub fn alert_sink_counts(&self) -> Vec<alerts::SinkCounts> {
        self.alerts.sink_counts()
    }

    /// Reloads the config file now (what SIGHUP does).
    pub async fn reload_config(&self) -> anyhow::Result<ReloadEvent> {
        let registry = self.registry.clone();
        Ok(tokio::task::spawn_blocking(move || registry.reload_config()).await?)
    }

    /// Reloads the config file because of SIGHUP (so recorded).
    pub async fn reload_on_signal(&self) -> anyhow::Result<ReloadEvent> {
        let registry = self.registry.clone();
        Ok(tokio::task::spawn_blocking(move || {
            registry.reload_config_by(registry::Trigger::Signal)
        })
        .await?)
    }

    /// Reloads `<name>.wasm` now (what the directory watcher does).
    pub async fn reload_plugin(&self, name: &str) -> anyhow::Result<ReloadEvent> {
        let registry = self.registry.clone();
        let name = name.to_owned();
        Ok(tokio::task::spawn_blocking(move || registry.reload_plugin(&name)).await?)
    }

    /// Stops accepting, drains requests in flight (up to
    /// [`server::DRAIN_TIMEOUT`]), and stops the watcher.
    pub async fn shutdown(self) {
        self.lifecycle.set_draining();
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.admin_shutdown.send(true);
        for task in self.admin_tasks {
            let _ = task.await;
        }
        self.sink.abort();
        if let Some(spans) = self.registry.spans() {
            spans.shutdown(SPAN_FLUSH).await;
        }
    }
}
