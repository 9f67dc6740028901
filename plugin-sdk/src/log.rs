//! Lines in the gateway's log, tagged with the plugin and the route.
//!
//! The [`trace!`](crate::trace), [`debug!`](crate::debug),
//! [`info!`](crate::info), [`warn!`](crate::warn) and
//! [`error!`](crate::error) macros take `format!` arguments.
//!
//! ```no_run
//! use portcullis_sdk::{log, warn};
//!
//! log::info("cache warmed");
//! let consumer = "alice";
//! warn!("consumer `{consumer}` uses a deprecated key");
//! ```

use crate::__private::bindings::portcullis::policy::host::{self, Level};

/// Logs very detailed diagnostics.
pub fn trace(message: &str) {
    host::log(Level::Trace, message);
}

/// Logs diagnostics.
pub fn debug(message: &str) {
    host::log(Level::Debug, message);
}

/// Logs normal operation.
pub fn info(message: &str) {
    host::log(Level::Info, message);
}

/// Logs something unusual that needs no action now.
pub fn warn(message: &str) {
    host::log(Level::Warn, message);
}

/// Logs a failure.
pub fn error(message: &str) {
    host::log(Level::Error, message);
}

/// Logs very detailed diagnostics, with `format!` arguments.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log::trace(&::std::format!($($arg)+))
    };
}

/// Logs diagnostics, with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log::debug(&::std::format!($($arg)+))
    };
}

/// Logs normal operation, with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log::info(&::std::format!($($arg)+))
    };
}

/// Logs something unusual that needs no action now, with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log::warn(&::std::format!($($arg)+))
    };
}

/// Logs a failure, with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log::error(&::std::format!($($arg)+))
    };
}
