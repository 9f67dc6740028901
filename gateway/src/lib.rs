//! Portcullis: a programmable API gateway. A hyper reverse proxy runs every
//! request through sandboxed WebAssembly policy plugins that are hot-loaded
//! from a directory.

pub mod alerts;
pub mod body;
pub mod clock;
pub mod config;
pub mod error;
pub mod plugin;
pub mod state;
