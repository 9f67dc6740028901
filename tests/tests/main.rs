//! The end-to-end tests, one module per capability, in one test binary:
//! each binary links the whole gateway and wasmtime, so one binary instead
//! of one per file saves gigabytes of disk and most of the link time.
//! `cargo test -p portcullis-tests --test integration rbac::` runs one
//! module. Tests share the process: log assertions (`logged`,
//! `logged_lines`) name something only their own test produces (a route, a
//! path, a directory). `reset_flood_memory.rs` stays a binary of its own.

mod alerts_plugin;
mod api_version;
mod audit;
mod basic_auth;
mod canary;
mod config_ui;
mod dashboard;
mod examples;
mod framing;
mod http2;
mod identity_provider;
mod jwt_auth;
mod mask;
mod module_cache;
mod observability;
mod otlp;
mod outbound;
mod policy_cases;
mod proxy;
mod rate_limit;
mod rbac;
mod reload;
mod rewrite;
mod runtime;
mod sandbox;
mod shadow;
mod signatures;
mod tls;
mod upstream_health;
mod upstream_protocols;
mod webhooks;
mod websocket;
