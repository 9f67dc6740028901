//! Pools of initialised instances, one pool per plugin per route.
//!
//! `init` runs once per instance, when the instance is created; requests
//! lease an idle instance, call their hooks on it and give it back. An
//! instance whose call failed is thrown away (its memory may be corrupt) and
//! the next lease makes a fresh one.

use std::sync::{Arc, Mutex};

use wasmtime::component::Resource;
use wasmtime::{Store, Trap};

use super::PluginError;
use super::bindings::Policy;
use super::bindings::portcullis::policy::types::{Hooks, RequestAction, ResponseChanges};
use super::engine::{CompiledPlugin, PluginEngine};
use super::host::{HostServices, StoreState};
use super::view::{RequestView, ResponseView};

/// Idle instances a pool keeps; more are dropped when given back, freeing
/// their slots for other plugins. Enough for the concurrency of a busy
/// route on a machine of a few dozen cores.
pub const MAX_IDLE_PER_POOL: usize = 64;

struct Instance {
    store: Store<StoreState>,
    policy: Policy,
}

/// The instances of one plugin configured on one route.
pub struct PluginPool {
    plugin: Arc<CompiledPlugin>,
    route: Arc<str>,
    config_json: String,
    hooks: Hooks,
    /// CPU deadline of one call, in ms.
    timeout_ms: u64,
    engine: Arc<PluginEngine>,
    services: Arc<HostServices>,
    idle: Mutex<Vec<Instance>>,
}

impl std::fmt::Debug for PluginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPool")
            .field("plugin", &self.plugin.name)
            .field("route", &self.route)
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl PluginPool {
    /// Creates the pool and its first instance, whose `init` validates the
    /// configuration: a pool that exists has a configuration its plugin
    /// accepted.
    pub async fn new(
        engine: Arc<PluginEngine>,
        plugin: Arc<CompiledPlugin>,
        route: Arc<str>,
        config_json: String,
        services: Arc<HostServices>,
    ) -> Result<Arc<Self>, PluginError> {
        let timeout_ms = engine.limits().timeout_ms;
        Self::with_timeout(engine, plugin, route, config_json, services, timeout_ms).await
    }

    /// Like [`new`](Self::new), with a CPU deadline of `timeout_ms` per call
    /// instead of the engine's (a route's `timeout_ms` for one plugin).
    pub async fn with_timeout(
        engine: Arc<PluginEngine>,
        plugin: Arc<CompiledPlugin>,
        route: Arc<str>,
        config_json: String,
        services: Arc<HostServices>,
        timeout_ms: u64,
    ) -> Result<Arc<Self>, PluginError> {
        let mut pool = Self {
            plugin,
            route,
            config_json,
            hooks: Hooks::empty(),
            timeout_ms,
            engine,
            services,
            idle: Mutex::new(Vec::new()),
        };
        let (instance, hooks) = pool.instantiate().await?;
        pool.hooks = hooks;
        pool.idle_mut(|idle| idle.push(instance));
        Ok(Arc::new(pool))
    }

    /// The plugin this pool runs.
    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.plugin
    }

    /// The configuration (as JSON) its instances were initialised with.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// The hooks the plugin reported from `init`.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// The CPU deadline of one call, in ms.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    fn deadline_ticks(&self) -> u64 {
        self.engine.deadline_ticks(self.timeout_ms)
    }

    /// Idle instances.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn idle_mut<R>(&self, f: impl FnOnce(&mut Vec<Instance>) -> R) -> R {
        let mut guard = match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    async fn instantiate(&self) -> Result<(Instance, Hooks), PluginError> {
        let limits = self.engine.limits();
        let state = StoreState::new(
            self.plugin.name.clone(),
            self.route.clone(),
            self.services.clone(),
            limits.memory_mib as usize * 1024 * 1024,
        );
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let policy = self
            .plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                if is_pool_exhausted(&e) {
                    PluginError::Exhausted
                } else {
                    classify(&e, &store, &self.engine, self.timeout_ms)
                        .unwrap_or_else(|| PluginError::Instantiate(format!("{e:#}")))
                }
            })?;
        store.set_epoch_deadline(self.deadline_ticks());
        let info = policy
            .call_init(&mut store, &self.config_json)
            .await
            .map_err(|e| {
                classify(&e, &store, &self.engine, self.timeout_ms)
                    .unwrap_or_else(|| trap(&e, &store))
            })?
            .map_err(PluginError::Config)?;
        Ok((Instance { store, policy }, info.hooks))
    }

    /// Takes an idle instance, or makes one.
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, PluginError> {
        let instance = match self.idle_mut(Vec::pop) {
            Some(instance) => instance,
            None => self.instantiate().await?.0,
        };
        Ok(Lease {
            pool: self.clone(),
            instance: Some(instance),
        })
    }
}

fn is_pool_exhausted(e: &wasmtime::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    })
}

/// Names the failure when it is one the sandbox enforces (deadline, memory).
fn classify(
    e: &wasmtime::Error,
    store: &Store<StoreState>,
    engine: &PluginEngine,
    timeout_ms: u64,
) -> Option<PluginError> {
    let limits = engine.limits();
    if store.data().memory.exceeded {
        return Some(PluginError::Memory(limits.memory_mib));
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Some(PluginError::Deadline(timeout_ms));
    }
    None
}

/// A trap, with whatever the plugin printed last (a panic message).
fn trap(e: &wasmtime::Error, store: &Store<StoreState>) -> PluginError {
    let reason = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    };
    let output = store.data().output_tail();
    if output.is_empty() {
        PluginError::Trap(reason)
    } else {
        PluginError::Trap(format!("{reason}; plugin output: {output}"))
    }
}

/// An instance lent to one request. Dropping the lease gives the instance
/// back to its pool, unless a call on it failed.
pub struct Lease {
    pool: Arc<PluginPool>,
    instance: Option<Instance>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("pool", &self.pool).finish()
    }
}

impl Lease {
    /// The pool this lease came from.
    pub fn pool(&self) -> &Arc<PluginPool> {
        &self.pool
    }

    /// Takes the views back after a call; on failure discards the instance
    /// and classifies the error.
    fn finish<R>(
        &mut self,
        result: wasmtime::Result<R>,
    ) -> (
        Option<RequestView>,
        Option<ResponseView>,
        Result<R, PluginError>,
    ) {
        let Some(instance) = self.instance.as_mut() else {
            return (None, None, Err(failed()));
        };
        let result = result.map_err(|e| {
            classify(&e, &instance.store, &self.pool.engine, self.pool.timeout_ms)
                .unwrap_or_else(|| trap(&e, &instance.store))
        });
        let data = instance.store.data_mut();
        let (request, response) = (data.request.take(), data.response.take());
        if result.is_err() {
            self.instance = None;
        }
        (request, response, result)
    }

    /// Calls `on-request`. The view is lent to the instance for the call and
    /// handed back with the plugin's decision.
    pub async fn on_request(
        &mut self,
        request: RequestView,
    ) -> (RequestView, Result<RequestAction, PluginError>) {
        let ticks = self.pool.deadline_ticks();
        let Some(instance) = self.instance.as_mut() else {
            return (request, Err(failed()));
        };
        lend(instance, request, None, ticks);
        let result = instance
            .policy
            .call_on_request(&mut instance.store, Resource::new_borrow(0))
            .await;
        let (request, _, result) = self.finish(result);
        (
            request.expect("the host never takes the request view during a call"),
            result,
        )
    }

    /// Calls `on-response` with the request and the response.
    pub async fn on_response(
        &mut self,
        request: RequestView,
        response: ResponseView,
    ) -> (
        RequestView,
        ResponseView,
        Result<ResponseChanges, PluginError>,
    ) {
        let ticks = self.pool.deadline_ticks();
        let Some(instance) = self.instance.as_mut() else {
            return (request, response, Err(failed()));
        };
        lend(instance, request, Some(response), ticks);
        let result = instance
            .policy
            .call_on_response(
                &mut instance.store,
                Resource::new_borrow(0),
                Resource::new_borrow(0),
            )
            .await;
        let (request, response, result) = self.finish(result);
        (
            request.expect("the host never takes the request view during a call"),
            response.expect("the host never takes the response view during a call"),
            result,
        )
    }

    /// Calls `on-tick` for the route `route`.
    pub async fn on_tick(&mut self, route: &str) -> Result<(), PluginError> {
        let ticks = self.pool.deadline_ticks();
        let Some(instance) = self.instance.as_mut() else {
            return Err(failed());
        };
        instance.store.set_epoch_deadline(ticks);
        let result = instance
            .policy
            .call_on_tick(&mut instance.store, route)
            .await;
        self.finish(result).2
    }
}

/// Lends the views to the instance for one call under a fresh CPU deadline.
fn lend(instance: &mut Instance, request: RequestView, response: Option<ResponseView>, ticks: u64) {
    let data = instance.store.data_mut();
    data.request = Some(request);
    data.response = response;
    instance.store.set_epoch_deadline(ticks);
}

fn failed() -> PluginError {
    PluginError::Trap("instance already failed".into())
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            // Past the cap the instance is dropped (outside the lock), so a
            // burst does not keep its instance slots and memory forever.
            let surplus = self.pool.idle_mut(|idle| {
                if idle.len() < MAX_IDLE_PER_POOL {
                    idle.push(instance);
                    None
                } else {
                    Some(instance)
                }
            });
            drop(surplus);
        }
    }
}
