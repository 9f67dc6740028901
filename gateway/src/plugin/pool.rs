//! Pools of initialised instances, one pool per plugin per route, and how a
//! hook call runs.
//!
//! `init` runs once per instance, when the instance is created. A hook call
//! takes an idle instance (or makes one), runs on it and gives it back: an
//! instance is held for **one call**, never across the upstream call, so
//! the request and response phases of one request may run on different
//! instances (state between them rides in the request's attributes). An
//! instance whose call failed, or whose call was abandoned (the client went
//! away), is thrown away: its memory may be half-updated.
//!
//! A call starts on the runtime worker that serves the request. At every
//! epoch tick ([`EPOCH_TICK`](super::engine::EPOCH_TICK)) it yields; a call
//! still running then is moved to the engine's plugin threads, so a plugin
//! that computes for its whole budget holds an I/O worker for two ticks at
//! most, and a pool whose recent calls were long starts its calls there
//! directly (see [`drive`]). Past its budget of ticks a call traps.
//!
//! Calls in flight are limited per pool ([`CallLimits`]); a call waits its
//! turn for a bounded time, then the request gets 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::PluginError;
use super::bindings::Policy;
use super::bindings::portcullis::policy::types::{Hooks, RequestAction, ResponseChanges};
use super::engine::{CompiledPlugin, PluginEngine};
use super::host::{HostServices, StoreState};
use super::outbound::Outbound;
use super::view::{RequestView, ResponseView};

/// Idle instances a pool keeps; more are dropped when given back, freeing
/// their slots for other plugins. When the instance allocator is full, idle
/// instances of other pools are dropped before a new one is refused.
pub const MAX_IDLE_PER_POOL: usize = 64;

/// How many times making an instance evicts another pool's idle instance
/// and tries again before giving up with [`PluginError::Exhausted`].
const EVICTION_ATTEMPTS: usize = 4;

/// One initialised instance: its store (with the views of the call in
/// progress, if any) and its exports.
pub(super) struct Instance {
    store: Store<StoreState>,
    policy: Policy,
    /// Tells waiting calls when this instance's slot is free again.
    _slot: SlotGuard,
}

/// Wakes the calls waiting for an instance slot when an instance is
/// dropped (its slot goes back to the allocator).
struct SlotGuard(Arc<SlotWaiters>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.wake();
    }
}

/// Calls waiting for an instance slot, woken when one is given back or
/// dropped. Waking costs one atomic load when nobody waits, so the call
/// path takes no lock.
#[derive(Debug, Default)]
pub(super) struct SlotWaiters {
    notify: tokio::sync::Notify,
    waiting: AtomicUsize,
}

impl SlotWaiters {
    /// Wakes every waiting call, if there is one.
    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// Counts a call as waiting for a slot while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How the calls of one pool are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// The budget of one call, in ms: the epoch ticks it may run in.
    pub timeout_ms: u64,
    /// Calls in flight at once; more wait for a turn.
    pub max_concurrent: u32,
    /// How long a call waits for its turn before failing with
    /// [`PluginError::Busy`] (503).
    pub queue_timeout_ms: u64,
}

impl CallLimits {
    /// The defaults of a route's plugin entry.
    pub const DEFAULT_MAX_CONCURRENT: u32 = 64;
    /// The default wait for a turn.
    pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 1_000;

    /// `timeout_ms` with the default concurrency and wait.
    pub fn with_timeout(timeout_ms: u64) -> Self {
        Self {
            timeout_ms,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            queue_timeout_ms: Self::DEFAULT_QUEUE_TIMEOUT_MS,
        }
    }
}

/// The instances of one plugin configured on one route.
pub struct PluginPool {
    plugin: Arc<CompiledPlugin>,
    route: Arc<str>,
    config_json: String,
    hooks: Hooks,
    limits: CallLimits,
    engine: Arc<PluginEngine>,
    services: Arc<HostServices>,
    idle: Mutex<Vec<Instance>>,
    /// Turns for calls in flight.
    turns: Semaphore,
    /// Calls running on an instance now.
    in_use: AtomicUsize,
    /// Whether its instances are a shadow candidate's, and what they may
    /// call.
    role: PoolRole,
    /// How much this pool's recent calls ran past a tick: raised by
    /// [`LONG_CALL_WEIGHT`] for each long call, lowered by one for each
    /// short one. While above zero, calls start on the plugin threads.
    long_calls: AtomicU32,
}

/// What a pool's instances are, besides their plugin and config.
#[derive(Debug, Clone, Default)]
pub struct PoolRole {
    /// A shadow candidate's: its instances have a store namespace of their
    /// own (`<plugin>#shadow`), so that what it counts never moves the live
    /// plugin's counters, its alerts are dropped, and its log lines are
    /// marked `(shadow)`.
    pub shadow: bool,
    /// The origins its instances may call (the route's `outbound`).
    pub outbound: Option<Arc<Outbound>>,
}

/// How much one long call raises [`PluginPool::long_calls`]: after a long
/// call, this many short ones run before calls start on a runtime worker
/// again.
const LONG_CALL_WEIGHT: u32 = 8;
/// The highest [`PluginPool::long_calls`] goes.
const LONG_CALLS_CAP: u32 = 64;

impl std::fmt::Debug for PluginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPool")
            .field("plugin", &self.plugin.name)
            .field("route", &self.route)
            .field("hooks", &self.hooks)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A hook call in progress: owns its instance, and hands it back with the
/// result. Owning it is what lets the call move to another thread, and
/// what makes dropping an abandoned call drop its instance.
type CallFuture<R> = Pin<Box<dyn Future<Output = (Instance, wasmtime::Result<R>)> + Send>>;

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
        limits: CallLimits,
    ) -> Result<Arc<Self>, PluginError> {
        let role = PoolRole::default();
        Self::with_role(engine, plugin, route, config_json, services, limits, role).await
    }

    /// [`PluginPool::new`] in `role`: with an outbound grant, and/or a
    /// shadow candidate's pool (see [`PoolRole`]).
    pub async fn with_role(
        engine: Arc<PluginEngine>,
        plugin: Arc<CompiledPlugin>,
        route: Arc<str>,
        config_json: String,
        services: Arc<HostServices>,
        limits: CallLimits,
        role: PoolRole,
    ) -> Result<Arc<Self>, PluginError> {
        let mut pool = Self {
            plugin,
            route,
            config_json,
            hooks: Hooks::empty(),
            turns: Semaphore::new(limits.max_concurrent.max(1) as usize),
            limits,
            engine,
            services,
            idle: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(0),
            long_calls: AtomicU32::new(0),
            role,
        };
        let (instance, hooks) = pool.instantiate().await?;
        pool.hooks = hooks;
        pool.idle_mut(|idle| idle.push(instance));
        let pool = Arc::new(pool);
        pool.engine.register_pool(&pool);
        Ok(pool)
    }

    /// The plugin this pool runs.
    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.plugin
    }

    /// The configuration (as JSON) its instances were initialised with.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// The outbound grant of its instances, if any.
    pub fn outbound(&self) -> Option<&Arc<Outbound>> {
        self.role.outbound.as_ref()
    }

    /// The hooks the plugin reported from `init`.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// How its calls are limited.
    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// The CPU deadline of one call, in ms.
    pub fn timeout_ms(&self) -> u64 {
        self.limits.timeout_ms
    }

    /// Idle instances.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Calls that may start now without waiting.
    pub fn free_turns(&self) -> usize {
        self.turns.available_permits()
    }

    /// Instances busy with a call now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    fn idle_mut<R>(&self, f: impl FnOnce(&mut Vec<Instance>) -> R) -> R {
        let mut guard = match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Drops one idle instance, freeing its slot; false if there was none.
    pub(super) fn evict_idle(&self) -> bool {
        let evicted = self.idle_mut(Vec::pop);
        let found = evicted.is_some();
        drop(evicted);
        found
    }

    /// Makes an instance and runs its `init`. When the instance allocator
    /// is full, idle instances of other pools make room first.
    async fn instantiate(&self) -> Result<(Instance, Hooks), PluginError> {
        let mut attempt = 0;
        loop {
            match self.instantiate_once().await {
                Err(PluginError::Exhausted)
                    if attempt < EVICTION_ATTEMPTS && self.engine.evict_idle_instance() =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn instantiate_once(&self) -> Result<(Instance, Hooks), PluginError> {
        let limits = self.engine.limits();
        let state = StoreState::new(
            self.plugin.name.clone(),
            self.route.clone(),
            self.services.clone(),
            limits.memory_mib as usize * 1024 * 1024,
            self.role.shadow,
            self.role.outbound.clone(),
        );
        let mut store = Store::new(&self.plugin.engine, state);
        store.limiter(|s| &mut s.memory);
        // At every tick a call in progress yields to the scheduler, while
        // within its budget; past it, it traps (`Trap::Interrupt`).
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.ticks_left <= 1 {
                state.ticks_left = 0;
                return Ok(UpdateDeadline::Interrupt);
            }
            state.ticks_left -= 1;
            Ok(UpdateDeadline::Yield(1))
        });
        self.arm(&mut store);
        let policy = self
            .plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                if is_pool_exhausted(&e) {
                    PluginError::Exhausted
                } else {
                    classify(&e, &store, &self.engine, self.limits.timeout_ms)
                        .unwrap_or_else(|| PluginError::Instantiate(format!("{e:#}")))
                }
            })?;
        self.arm(&mut store);
        let info = policy
            .call_init(&mut store, &self.config_json)
            .await
            .map_err(|e| {
                classify(&e, &store, &self.engine, self.limits.timeout_ms)
                    .unwrap_or_else(|| trap(&e, &store))
            })?
            .map_err(PluginError::Config)?;
        let slot = SlotGuard(self.engine.slot_waiters().clone());
        Ok((
            Instance {
                store,
                policy,
                _slot: slot,
            },
            info.hooks,
        ))
    }

    /// Gives `store` a fresh budget for one call: its first deadline, and
    /// the ticks it may run in.
    ///
    /// The first deadline is two ticks away, so that a call of microseconds
    /// that happens to start just before a tick never yields (with one, one
    /// call in a few hundred would, and move threads for nothing); a long
    /// call first yields after one to two ticks. The budget counts that
    /// first stretch as one of its ticks.
    fn arm(&self, store: &mut Store<StoreState>) {
        let ticks = self.engine.deadline_ticks(self.limits.timeout_ms);
        store.data_mut().ticks_left = ticks.saturating_sub(1).max(1);
        store.set_epoch_deadline(2);
    }

    /// Runs one hook call: waits for a turn, takes an instance, lends it
    /// `request` (and `response`), runs `call` on it (see [`drive`]), and
    /// gives the views back with the result. The instance goes back to the
    /// pool if the call succeeded; it is dropped if the call failed or is
    /// abandoned.
    async fn call<R: Send + 'static>(
        &self,
        request: Option<Box<RequestView>>,
        response: Option<Box<ResponseView>>,
        call: impl FnOnce(Instance) -> CallFuture<R>,
    ) -> (
        Option<Box<RequestView>>,
        Option<Box<ResponseView>>,
        Result<R, PluginError>,
    ) {
        let _turn = match self.turn().await {
            Ok(turn) => turn,
            Err(e) => return (request, response, Err(e)),
        };
        let instance = match self.instance().await {
            Ok(instance) => instance,
            Err(e) => return (request, response, Err(e)),
        };
        let _busy = InUse::count(&self.in_use);
        let mut instance = instance;
        let data = instance.store.data_mut();
        data.request = request;
        data.response = response;
        self.arm(&mut instance.store);
        let start_off_worker = self.long_calls.load(Ordering::Relaxed) > 0;
        let (mut instance, result, went_long) = drive(
            call(instance),
            self.engine.plugin_threads(),
            start_off_worker,
        )
        .await;
        // Waiting on the network is not computing: such a call does not
        // make the pool's calls start on the plugin threads.
        let awaited = std::mem::take(&mut instance.store.data_mut().awaited_network);
        self.note_length(went_long && !awaited);
        let result = result.map_err(|e| {
            classify(&e, &instance.store, &self.engine, self.limits.timeout_ms)
                .unwrap_or_else(|| trap(&e, &instance.store))
        });
        let data = instance.store.data_mut();
        let (request, response) = (data.request.take(), data.response.take());
        if result.is_ok() {
            self.give_back(instance);
        }
        (request, response, result)
    }

    /// An instance for one call: an idle one, or a new one. When the
    /// instance allocator is full (even after evicting idle instances of
    /// other pools), waits for an instance to be given back or dropped, up
    /// to `queue_timeout_ms`, then fails with [`PluginError::Exhausted`].
    async fn instance(&self) -> Result<Instance, PluginError> {
        let wait = Duration::from_millis(self.limits.queue_timeout_ms);
        let mut deadline = None;
        let waiters = self.engine.slot_waiters();
        loop {
            if let Some(instance) = self.idle_mut(Vec::pop) {
                return Ok(instance);
            }
            match self.instantiate().await {
                Ok((instance, _)) => return Ok(instance),
                Err(PluginError::Exhausted) => {}
                Err(e) => return Err(e),
            }
            // Full: wait. Registered (and counted) before looking again, so
            // that a slot freed in between is not missed.
            let freed = waiters.notify.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            waiters.waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&waiters.waiting);
            if let Some(instance) = self.idle_mut(Vec::pop) {
                return Ok(instance);
            }
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + wait);
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(PluginError::Exhausted);
            }
        }
    }

    /// Remembers whether a call ran past a tick.
    fn note_length(&self, went_long: bool) {
        let update = |score: u32| {
            Some(if went_long {
                score.saturating_add(LONG_CALL_WEIGHT).min(LONG_CALLS_CAP)
            } else {
                score.saturating_sub(1)
            })
        };
        // Skips the write when nothing changes (a pool of short calls).
        if went_long || self.long_calls.load(Ordering::Relaxed) > 0 {
            let _ = self
                .long_calls
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, update);
        }
    }

    /// A turn for one call: at once if one is free, else after waiting up
    /// to `queue_timeout_ms`.
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PluginError> {
        if let Ok(turn) = self.turns.try_acquire() {
            return Ok(turn);
        }
        let wait = Duration::from_millis(self.limits.queue_timeout_ms);
        match tokio::time::timeout(wait, self.turns.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            _ => Err(PluginError::Busy(self.limits.max_concurrent)),
        }
    }

    /// Keeps an instance whose call succeeded for the next call; past the
    /// cap it is dropped (outside the lock). Either way a call waiting for
    /// an instance is woken.
    fn give_back(&self, instance: Instance) {
        let surplus = self.idle_mut(|idle| {
            if idle.len() < MAX_IDLE_PER_POOL {
                idle.push(instance);
                None
            } else {
                Some(instance)
            }
        });
        match surplus {
            Some(instance) => drop(instance),
            None => self.engine.slot_waiters().wake(),
        }
    }

    /// Calls `on-request`. The view is lent to the instance for the call and
    /// handed back with the plugin's decision.
    ///
    /// Views travel boxed: a call's futures and results move them several
    /// times, and moving a request head by value (hundreds of bytes) cost
    /// some 30 `memcpy` calls per plugin call.
    pub async fn on_request(
        &self,
        request: Box<RequestView>,
    ) -> (Box<RequestView>, Result<RequestAction, PluginError>) {
        let (returned, _, result) = self
            .call(Some(request), None, |mut instance| {
                Box::pin(async move {
                    let result = instance
                        .policy
                        .call_on_request(&mut instance.store, Resource::new_borrow(0))
                        .await;
                    (instance, result)
                })
            })
            .await;
        match returned {
            Some(request) => (request, result),
            None => unreachable_view(),
        }
    }

    /// Calls `on-response` with the request and the response.
    pub async fn on_response(
        &self,
        request: Box<RequestView>,
        response: Box<ResponseView>,
    ) -> (
        Box<RequestView>,
        Box<ResponseView>,
        Result<ResponseChanges, PluginError>,
    ) {
        let (request, response, result) = self
            .call(Some(request), Some(response), |mut instance| {
                Box::pin(async move {
                    let result = instance
                        .policy
                        .call_on_response(
                            &mut instance.store,
                            Resource::new_borrow(0),
                            Resource::new_borrow(0),
                        )
                        .await;
                    (instance, result)
                })
            })
            .await;
        match (request, response) {
            (Some(request), Some(response)) => (request, response, result),
            _ => unreachable_view(),
        }
    }

    /// Calls `on-tick` for the route `route`.
    pub async fn on_tick(&self, route: &str) -> Result<(), PluginError> {
        let route = route.to_owned();
        self.call(None, None, move |mut instance| {
            Box::pin(async move {
                let result = instance
                    .policy
                    .call_on_tick(&mut instance.store, &route)
                    .await;
                (instance, result)
            })
        })
        .await
        .2
    }
}

/// Counts a call as running on an instance for as long as it lives (so a
/// call dropped half-way stops counting).
struct InUse<'a>(&'a AtomicUsize);

impl<'a> InUse<'a> {
    fn count(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The host lends the views for a call and always gets them back: nothing
/// in the host takes them out of the store during a call.
fn unreachable_view() -> ! {
    panic!("a view lent to a plugin call was not handed back")
}

/// Runs a call to the end; also says whether it was long (ran a whole epoch
/// tick).
///
/// The first poll happens here, on the runtime worker serving the request:
/// most calls (microseconds) finish in it. A call still running then has
/// reached an epoch tick and yielded: it is moved to `threads`, the
/// engine's plugin threads, so that it holds this worker for two ticks at
/// most, and this task waits for it there. With `start_off_worker` (the
/// pool's recent calls were long) the call starts on the plugin threads
/// and never takes a worker's time.
///
/// If this future is dropped (the client went away), the call is dropped
/// with its instance: here directly, or on the plugin threads by aborting
/// its task, which drops it at its next yield.
async fn drive<R: Send + 'static>(
    call: CallFuture<R>,
    threads: &tokio::runtime::Handle,
    start_off_worker: bool,
) -> (Instance, wasmtime::Result<R>, bool) {
    let mut call = Some(call);
    if !start_off_worker {
        let first = std::future::poll_fn(|cx| match call.as_mut() {
            Some(running) => match running.as_mut().poll(cx) {
                Poll::Ready(done) => Poll::Ready(Some(done)),
                Poll::Pending => Poll::Ready(None),
            },
            None => Poll::Ready(None),
        })
        .await;
        if let Some((instance, result)) = first {
            return (instance, result, false);
        }
    }
    let Some(running) = call.take() else {
        unreachable_call()
    };
    // Long: it yielded again here, after a whole tick of its own. A short
    // call that merely started just before a tick (one yield) is not.
    let went_long = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = threads.spawn({
        let went_long = went_long.clone();
        async move {
            let mut running = running;
            let mut polls = 0u32;
            std::future::poll_fn(|cx| {
                polls += 1;
                if polls > 1 {
                    went_long.store(true, Ordering::Relaxed);
                }
                running.as_mut().poll(cx)
            })
            .await
        }
    });
    // Aborting a task that has finished does nothing, so the guard may
    // simply go out of scope once the call is done.
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok((instance, result)) => (instance, result, went_long.load(Ordering::Relaxed)),
        // The task is only aborted by `AbortOnDrop`, when this future is
        // gone; a panic in a call is a bug in the host's bindings.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => unreachable_call(),
    }
}

fn unreachable_call() -> ! {
    panic!("a plugin call was lost before it finished")
}

/// Aborts the plugin-thread task of a call whose caller is gone.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
