//! The wasmtime host: one engine for every plugin, modules compiled (and
//! cached on disk) off the request path, and pools of initialised instances
//! per plugin and route.
//!
//! This module sees only the WIT contract's types and the [`view`] structs;
//! it knows nothing of routing, upstreams or the server.
//!
//! Sandbox: each instance runs in its own store with a memory cap (pooling
//! allocator and a store limiter) and an epoch deadline per call; WASI is
//! linked only so that Rust's standard library can start, with no
//! preopened directories, no environment, no arguments and no network.
//!
//! Calls are async (wasm runs on a fiber from the pooling allocator's stack
//! pool): wasmtime-wasi's synchronous bindings block on a tokio runtime,
//! which panics on a runtime thread, while its async bindings simply await.
//! A call yields at every epoch tick, and one still running after its
//! first tick moves to the engine's plugin threads (see [`pool`]), so no
//! plugin holds a runtime worker for more than two ticks.

pub mod apply;
pub mod cache;
pub mod engine;
mod host;
pub mod outbound;
pub mod pool;
pub mod stamp;
pub mod view;

pub use cache::ModuleCache;
pub use engine::{CompiledPlugin, PluginEngine, Tier};
pub use host::HostServices;
pub use outbound::Outbound;
pub use pool::{CallLimits, PluginPool, PoolRole};

/// Bindings generated from `wit/policy.wit`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        with: {
            "portcullis:policy/types.request": super::view::RequestHandle,
            "portcullis:policy/types.response": super::view::ResponseHandle,
        },
        // Exports run on a fiber (`call_async`) so that WASI's host side,
        // which is async and tokio-based, never blocks a runtime thread.
        exports: { default: async },
        // A plugin's outbound HTTP call awaits the network on the host:
        // the plugin's fiber is suspended and the thread serves others.
        imports: { "portcullis:policy/http.send": async },
    });
}

pub use bindings::portcullis::policy::types::{
    ClientCertificate, Hooks, Identity, Reply, RequestAction, RequestChanges, ResponseChanges,
};

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The file is not a valid component (or not WebAssembly at all).
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component does not implement the `portcullis:policy` world, or
    /// imports something the gateway does not provide.
    #[error("does not implement the portcullis:policy@0.2 world: {0}")]
    WrongWorld(String),
    /// Creating an instance failed.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// `init` rejected the configuration.
    #[error("rejected its configuration: {0}")]
    Config(String),
    /// The call trapped (including a panic in the plugin).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its CPU deadline.
    #[error("exceeded its CPU deadline of {0} ms")]
    Deadline(u64),
    /// The instance tried to grow past its memory cap.
    #[error("exceeded its memory limit of {0} MiB")]
    Memory(u32),
    /// Every instance slot is in use, even after dropping idle instances
    /// of other pools.
    #[error("no free instance slot (limits.max_instances reached)")]
    Exhausted,
    /// Every turn of the pool stayed taken for the whole queue timeout.
    #[error("{0} calls already in flight and no turn came free in time (max_concurrent_calls)")]
    Busy(u32),
    /// The plugin returned something the gateway cannot apply.
    #[error("returned an invalid result: {0}")]
    BadResult(String),
}

impl PluginError {
    /// Whether the error means the gateway is out of capacity rather than
    /// that the plugin misbehaved.
    pub fn is_overload(&self) -> bool {
        matches!(self, PluginError::Exhausted | PluginError::Busy(_))
    }
}
