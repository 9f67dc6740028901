//! The one wasmtime [`Engine`] of the gateway, its linker, the epoch ticker
//! that enforces CPU deadlines, and compilation with an authenticated
//! on-disk cache ([`ModuleCache`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy,
    Strategy,
};

use super::PluginError;
use super::bindings::{Policy, PolicyPre};
use super::cache::ModuleCache;
use super::host::StoreState;
use super::pool::{PluginPool, SlotWaiters};

/// How often the epoch advances. A plugin call yields at every tick (so a
/// long call holds a runtime worker for two ticks at most) and its budget is
/// counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// SHA-256 of a module's bytes, hex: its identity in logs and in the cache.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Limits that shape the engine; fixed for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Linear memory cap per instance, MiB.
    pub memory_mib: u32,
    /// CPU deadline per call, ms.
    pub timeout_ms: u64,
    /// Instances alive at once, across all plugins.
    pub max_instances: u32,
}

/// Which compiler made a module's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Winch, wasmtime's baseline compiler: compiles several times faster,
    /// runs slower. A module never seen before serves this build while the
    /// optimized one compiles in the background.
    Baseline,
    /// Cranelift: what serves for good, and what the module cache holds.
    Optimized,
}

/// A module that compiled and implements the `policy` world, ready to be
/// instantiated cheaply any number of times.
pub struct CompiledPlugin {
    /// The plugin's name (the file stem).
    pub name: Arc<str>,
    /// SHA-256 of the module bytes, hex.
    pub hash: String,
    /// Size of the module file in bytes.
    pub size: usize,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// How long compiling (or loading from the cache) took.
    pub load_time: Duration,
    /// When it was loaded.
    pub loaded_at: std::time::SystemTime,
    /// Which compiler made its code.
    pub tier: Tier,
    /// The engine it was compiled for: its instances' stores use it.
    pub(super) engine: Engine,
    pub(super) pre: PolicyPre<StoreState>,
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("from_cache", &self.from_cache)
            .field("tier", &self.tier)
            .finish()
    }
}

/// The engine, its linker, its epoch ticker, and the threads long plugin
/// calls run on.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<StoreState>,
    /// Winch, for a first build of modules never seen before: its
    /// instances are allocated on demand (they serve for the time the
    /// optimized build takes), with the same memory cap. `None` where
    /// Winch does not run (it supports x86_64 only).
    baseline: Option<(Engine, Linker<StoreState>)>,
    limits: EngineLimits,
    compat: String,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    /// The plugin threads: calls still running after their first tick
    /// continue here, off the runtime workers (see `pool::drive`).
    plugin_threads: Option<tokio::runtime::Runtime>,
    /// Every pool made with this engine, for evicting idle instances when
    /// the instance allocator is full. Only touched when a pool is made and
    /// when the allocator is full: never on a call's path.
    pools: Mutex<Vec<Weak<PluginPool>>>,
    /// Calls waiting for an instance slot.
    slot_waiters: Arc<SlotWaiters>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("limits", &self.limits)
            .finish()
    }
}

/// Core instances, memories and tables a component built by the Rust
/// toolchain for `wasm32-wasip2` needs (the program, the WASI adapter and the
/// small shim modules the component linker adds).
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

impl PluginEngine {
    /// Builds the engine with the pooling allocator sized by `limits`, and
    /// starts the epoch ticker.
    pub fn new(limits: EngineLimits) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let n = limits.max_instances;
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
            .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
            .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .total_stacks(n)
            .max_memory_size(limits.memory_mib as usize * 1024 * 1024);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            // Optimized builds compile on one low-priority thread, in the
            // background: on the shared parallel-compilation pool they would
            // hold up the baseline builds that make modules live. No
            // incremental-compilation cache: it made a new build of a loaded
            // plugin compile 3 times faster, but the baseline build now
            // makes it live, and the cache kept 30 MiB (9 plugins).
            .parallel_compilation(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        perf_map(&mut config);
        let engine = Engine::new(&config)?;
        let linker = policy_linker(&engine)?;

        let baseline = match baseline_engine() {
            Ok(baseline) => Some(baseline),
            Err(e) => {
                tracing::warn!(
                    "no baseline compiler on this platform, new modules wait for \
                     their optimized build: {e:#}"
                );
                None
            }
        };

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engines: Vec<Engine> = std::iter::once(engine.clone())
                .chain(baseline.as_ref().map(|(engine, _)| engine.clone()))
                .collect();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("portcullis-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        for engine in &engines {
                            engine.increment_epoch();
                        }
                    }
                })?
        };
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let plugin_threads = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("portcullis-plugin")
            .on_thread_start(lower_thread_priority)
            .enable_all()
            .build()?;
        Ok(Self {
            engine,
            linker,
            baseline,
            limits,
            compat,
            stop,
            ticker: Some(ticker),
            plugin_threads: Some(plugin_threads),
            pools: Mutex::new(Vec::new()),
            slot_waiters: Arc::new(SlotWaiters::default()),
        })
    }

    /// Where long plugin calls continue (see `pool::drive`).
    pub(super) fn plugin_threads(&self) -> &tokio::runtime::Handle {
        match &self.plugin_threads {
            Some(runtime) => runtime.handle(),
            // Only `drop` takes the runtime.
            None => unreachable!("the plugin threads live as long as the engine"),
        }
    }

    /// Calls waiting for an instance slot, woken when one is given back
    /// or dropped.
    pub(super) fn slot_waiters(&self) -> &Arc<SlotWaiters> {
        &self.slot_waiters
    }

    /// Remembers `pool`, so that its idle instances can be evicted when
    /// another pool needs a slot.
    pub(super) fn register_pool(&self, pool: &Arc<PluginPool>) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// Drops one idle instance of the pool that holds the most, freeing an
    /// instance slot; false if no pool has one.
    pub(super) fn evict_idle_instance(&self) -> bool {
        let pools: Vec<Arc<PluginPool>> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        pools
            .iter()
            .max_by_key(|p| p.idle_count())
            .is_some_and(|p| p.evict_idle())
    }

    /// The limits the engine was built with.
    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Epoch ticks that make up a CPU deadline of `timeout_ms`. One tick is
    /// added because the current tick may be almost over when a call starts.
    pub(super) fn deadline_ticks(&self, timeout_ms: u64) -> u64 {
        let tick = EPOCH_TICK.as_millis() as u64;
        timeout_ms.div_ceil(tick) + 1
    }

    /// Checks that `bytes` are a valid WebAssembly component, without
    /// compiling them (milliseconds, and no memory kept): for modules no
    /// route uses yet. Whether it implements the `policy` world is checked
    /// when it is compiled.
    pub fn validate(&self, bytes: &[u8]) -> Result<(), PluginError> {
        use wasmtime::wasmparser::{Parser, Validator, WasmFeatures};
        if !Parser::is_component(bytes) {
            return Err(PluginError::Compile(
                "not a WebAssembly component (a core module, or not WebAssembly)".into(),
            ));
        }
        Validator::new_with_features(WasmFeatures::all())
            .validate_all(bytes)
            .map(|_| ())
            .map_err(|e| PluginError::Compile(e.to_string()))
    }

    /// The engine's compatibility hash: compiled code from another engine
    /// configuration never loads into this one.
    pub fn compatibility_hash(&self) -> &str {
        &self.compat
    }

    /// Compiles `bytes` as the plugin `name` and checks it against the
    /// `policy` world. With a cache, a module compiled before by a
    /// compatible engine is loaded from there instead (if its entry
    /// verifies), and a new one is stored there.
    pub fn compile(
        &self,
        name: &str,
        bytes: &[u8],
        cache: Option<&Arc<ModuleCache>>,
    ) -> Result<CompiledPlugin, PluginError> {
        let started = Instant::now();
        let hash = content_hash(bytes);
        let mut from_cache = false;
        let component = match cache.and_then(|c| c.load(&self.engine, &hash, &self.compat)) {
            Some(component) => {
                from_cache = true;
                component
            }
            None => {
                let component = Component::new(&self.engine, bytes)
                    .map_err(|e| PluginError::Compile(format!("{e:#}")))?;
                if let Some(cache) = cache {
                    // Off the reload's critical path: the module serves
                    // before its compiled form reaches the disk.
                    let (cache, component) = (cache.clone(), component.clone());
                    let (hash, compat) = (hash.clone(), self.compat.clone());
                    std::thread::spawn(move || cache.store(&hash, &compat, &component));
                }
                component
            }
        };
        self.finish(
            name,
            bytes,
            hash,
            component,
            Tier::Optimized,
            from_cache,
            started,
        )
    }

    /// The optimized build of `bytes` if the cache holds one that verifies;
    /// `None` otherwise (nothing is compiled).
    pub fn from_cache(
        &self,
        name: &str,
        bytes: &[u8],
        cache: Option<&Arc<ModuleCache>>,
    ) -> Option<Result<CompiledPlugin, PluginError>> {
        let started = Instant::now();
        let hash = content_hash(bytes);
        let component = cache?.load(&self.engine, &hash, &self.compat)?;
        Some(self.finish(name, bytes, hash, component, Tier::Optimized, true, started))
    }

    /// Whether this platform has the baseline compiler.
    pub fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Compiles `bytes` with the baseline compiler (Winch): several times
    /// faster than [`compile`](Self::compile), for a module never seen
    /// before to serve while its optimized build compiles. Nothing goes to
    /// the cache. `None` where there is no baseline compiler.
    pub fn compile_baseline(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Option<Result<CompiledPlugin, PluginError>> {
        let (engine, _) = self.baseline.as_ref()?;
        let started = Instant::now();
        let hash = content_hash(bytes);
        Some(
            Component::new(engine, bytes)
                .map_err(|e| PluginError::Compile(format!("{e:#}")))
                .and_then(|component| {
                    self.finish(name, bytes, hash, component, Tier::Baseline, false, started)
                }),
        )
    }

    /// Checks `component` against the `policy` world with the linker of its
    /// tier.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        name: &str,
        bytes: &[u8],
        hash: String,
        component: Component,
        tier: Tier,
        from_cache: bool,
        started: Instant,
    ) -> Result<CompiledPlugin, PluginError> {
        let (engine, linker) = match (tier, &self.baseline) {
            (Tier::Baseline, Some((engine, linker))) => (engine, linker),
            _ => (&self.engine, &self.linker),
        };
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::WrongWorld(format!("{e:#}")))?;
        let pre =
            PolicyPre::new(instance_pre).map_err(|e| PluginError::WrongWorld(format!("{e:#}")))?;
        Ok(CompiledPlugin {
            name: name.into(),
            hash,
            size: bytes.len(),
            from_cache,
            load_time: started.elapsed(),
            loaded_at: std::time::SystemTime::now(),
            tier,
            engine: engine.clone(),
            pre,
        })
    }
}

/// The baseline (Winch) engine and its linker: same features as the
/// optimized engine, instances allocated on demand.
fn baseline_engine() -> anyhow::Result<(Engine, Linker<StoreState>)> {
    let mut config = Config::new();
    config
        .strategy(Strategy::Winch)
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true);
    perf_map(&mut config);
    let engine = Engine::new(&config)?;
    let linker = policy_linker(&engine)?;
    Ok((engine, linker))
}

/// With `PORTCULLIS_PERFMAP=1` in the environment, the engines write
/// `/tmp/perf-<pid>.map`, so that `perf report` names plugin functions
/// (`wasm[0]::function[12]::sha2::...`) instead of bare addresses: how to
/// see where a plugin's time goes on the real request path. Off by
/// default (every module load appends to the file).
fn perf_map(config: &mut Config) {
    if std::env::var_os("PORTCULLIS_PERFMAP").is_some_and(|v| !v.is_empty() && v != "0") {
        config.profiler(ProfilingStrategy::PerfMap);
    }
}

/// A linker with WASI and the `policy` world's host side, for `engine`.
fn policy_linker(engine: &Engine) -> anyhow::Result<Linker<StoreState>> {
    let mut linker = Linker::<StoreState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Policy::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Gives the memory the allocator holds free back to the system: compiling
/// a module allocates tens of MiB that glibc otherwise keeps after they are
/// freed. Called after a load or reload that compiled something.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only returns free heap
        // pages to the system.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Lowers the priority of the calling thread (Linux `nice` 10): the plugin
/// threads, and the threads compiling optimized builds, so that when
/// long plugin calls keep every core busy the runtime workers, which
/// accept connections and run the short calls, still get a core as soon
/// as they have work.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only changes the scheduling priority of the
        // calling thread (`who = 0` names the caller: on Linux, priorities
        // are per thread); it takes no pointers.
        #[allow(unsafe_code)]
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, PLUGIN_THREAD_NICE) };
        if result != 0 {
            tracing::debug!("could not lower the priority of a plugin thread");
        }
    }
}

/// The `nice` value of the plugin threads.
#[cfg(target_os = "linux")]
const PLUGIN_THREAD_NICE: libc::c_int = 10;

impl Drop for PluginEngine {
    fn drop(&mut self) {
        if let Some(threads) = self.plugin_threads.take() {
            // Never blocks, so the engine may be dropped inside a runtime.
            threads.shutdown_background();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}
