//! Helpers shared by Portcullis plugins: a JSON path syntax, regex
//! replacement templates, HTTP token checks and configuration results.
//!
//! - [`path`]: parse `user.email`, `$.items[*].card`, `users.*.email` or
//!   `$["odd.key"]` into a [`JsonPath`](path::JsonPath), and tell whether
//!   it selects a given location in a document.
//! - [`template`]: compile a regex from configuration with a one-line
//!   error, and check a replacement template (`$1`, `${name}`) against the
//!   regex's capture groups, so that a slip is refused at load time.
//! - [`http`]: what a header name or a method may contain.
//! - [`config`]: [`Built`](config::Built), a plugin built from an accepted
//!   configuration with the warnings to log.
//!
//! Everything here is plain code over plain values: it runs the same on the
//! host (unit tests) as in a `wasm32-wasip2` plugin.

#![deny(missing_docs)]

pub mod config;
pub mod http;
pub mod path;
pub mod template;
