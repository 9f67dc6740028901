//! Write Portcullis policy plugins in Rust.
//!
//! A plugin is a type that implements [`Policy`], marked with
//! [`#[policy]`](macro@policy), in a `cdylib` crate built for
//! `wasm32-wasip2`. The gateway hands it the route's `config` table once,
//! then every request (and response) of the routes it is configured on.
//!
//! ```
//! use portcullis_sdk::{Action, Policy, Reply, Request, policy};
//! use serde::Deserialize;
//!
//! /// `config = { blocked_prefix = "/admin" }`
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     /// Requests whose path starts with this are refused.
//!     blocked_prefix: String,
//! }
//!
//! struct Block {
//!     prefix: String,
//! }
//!
//! #[policy]
//! impl Policy for Block {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         if !config.blocked_prefix.starts_with('/') {
//!             return Err("blocked_prefix: must start with `/`".into());
//!         }
//!         Ok(Block { prefix: config.blocked_prefix })
//!     }
//!
//!     fn on_request(&self, req: &Request) -> Action {
//!         if req.path().starts_with(&self.prefix) {
//!             return Reply::message(403, "blocked").into();
//!         }
//!         Action::next()
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! With `crate-type = ["cdylib"]` in its `Cargo.toml`,
//! `cargo build --release --target wasm32-wasip2` makes the component:
//! copy it into the gateway's plugin directory under the name the routes
//! use, and it is live.
//!
//! # What a plugin can use
//!
//! - The hooks get a [`Request`] and a [`Response`] to query, and return an
//!   [`Action`] ([`RequestChanges`] or a [`Reply`]) or [`ResponseChanges`].
//!   [`Reply::message`] is the usual JSON refusal and
//!   [`RequestChanges::authenticated`] what an authentication plugin returns.
//! - [`log`] (and the [`info!`] family of macros) writes to the gateway's
//!   log; [`time`] is the gateway's clock; [`alert`] raises alerts; [`store`]
//!   is a key-value store shared by every instance of the plugin; [`http`]
//!   calls the origins the route's config grants the plugin (an identity
//!   provider, say).
//!
//! # Testing plugins
//!
//! Off `wasm32` the gateway's services are not there: [`Request`] getters,
//! [`log`], [`store`] and the others panic when called. Keep a plugin's
//! decisions in plain functions of plain values, which unit tests call on
//! the host, and leave the hooks to read the request and call them.
#![deny(missing_docs)]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

mod action;
pub mod alert;
pub mod http;
pub mod log;
mod message;
mod plugin;
pub mod store;
pub mod time;

pub use action::{Action, Reply, RequestChanges, ResponseChanges};
pub use message::{Body, ClientCertificate, Identity, Request, Response};
pub use plugin::{Needs, Policy};

/// Exports an `impl Policy for YourType` block as the plugin's entry points.
///
/// Place it on the impl (once per plugin crate). It records which hooks the
/// impl defines, so that the gateway calls only those, and emits the
/// component exports. See [`Policy`] for an example.
pub use portcullis_sdk_macros::policy;
