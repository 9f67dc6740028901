//! Helpers shared by Portcullis plugins: a JSON path syntax, regex
//! replacement templates, HTTP checks, a verified-credential cache,
//! identity headers, configuration results and test helpers.
//!
//! - [`path`]: parse `user.email`, `$.items[*].card`, `users.*.email` or
//!   `$["odd.key"]` into a [`JsonPath`](path::JsonPath), and tell whether
//!   it selects a given location in a document.
//! - [`template`]: compile a regex from configuration with a one-line
//!   error, and check a replacement template (`$1`, `${name}`) against the
//!   regex's capture groups, so that a slip is refused at load time.
//! - [`http`]: what a header name, a method or a header value may contain.
//! - [`config`]: [`Built`](config::Built), a plugin built from an accepted
//!   configuration with the warnings to log.
//! - [`cache`]: [`VerifiedCache`](cache::VerifiedCache), a bounded cache of
//!   successful credential checks keyed by a salted digest, never past an
//!   expiry, failures never cached.
//! - [`identity`]: the `identity_headers` table of the authentication
//!   plugins, and the headers it sends upstream.
//! - `testing` (feature `testing`): configurations from JSON and hook
//!   decisions taken apart, for unit tests.
//!
//! Everything here is plain code over plain values: it runs the same on the
//! host (unit tests) as in a `wasm32-wasip2` plugin.

#![deny(missing_docs)]

pub mod cache;
pub mod config;
pub mod http;
pub mod identity;
pub mod path;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
