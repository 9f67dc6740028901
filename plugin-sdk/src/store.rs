//! A key-value store shared by every instance of the plugin (on every
//! route), kept by the gateway across instances and module reloads.
//!
//! Keys live in the plugin's own namespace. Every operation is atomic.
//! Entries with a time to live disappear once it has passed; a TTL is
//! rounded up to whole milliseconds.
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_sdk::store;
//!
//! # fn main() -> Result<(), store::StoreError> {
//! // A fixed window: the TTL is set when the key is created.
//! let count = store::increment("hits:203.0.113.7", 1, Some(Duration::from_secs(60)))?;
//! if count > 100 {
//!     // over the limit
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use crate::__private::bindings::portcullis::policy::store as wit;

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreError {
    /// [`increment`] on a value that is not a whole number.
    NotANumber,
    /// The store holds its maximum number of entries.
    Full,
    /// The key or value exceeds the size limit (key 512 bytes, value 64 KiB).
    TooLarge,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::NotANumber => "the stored value is not a whole number",
            StoreError::Full => "the store is full",
            StoreError::TooLarge => "the key or value is too large (key 512 bytes, value 64 KiB)",
        })
    }
}

impl std::error::Error for StoreError {}

impl From<wit::StoreError> for StoreError {
    fn from(error: wit::StoreError) -> Self {
        match error {
            wit::StoreError::NotANumber => StoreError::NotANumber,
            wit::StoreError::Full => StoreError::Full,
            wit::StoreError::TooLarge => StoreError::TooLarge,
        }
    }
}

/// The value of `key`, if present and not expired.
pub fn get(key: &str) -> Option<String> {
    wit::get(key)
}

/// Sets `key` to `value`, expiring after `ttl` if given.
pub fn set(key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
    wit::set(key, value, ttl.map(millis)).map_err(Into::into)
}

/// Removes `key`; true if it was present.
pub fn delete(key: &str) -> bool {
    wit::delete(key)
}

/// Adds `delta` to the whole number at `key` and returns the new value.
///
/// A missing or expired key starts at 0 and gets `ttl` as its time to live;
/// an existing key keeps its expiry, so a counter with a TTL is a fixed
/// window.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
    wit::increment(key, delta, ttl.map(millis)).map_err(Into::into)
}

/// Sets `key` to `new` only if its current value is `expected` (`None`: only
/// if absent or expired), expiring after `ttl` if given. Returns whether it
/// was set: the building block for token buckets and other
/// read-modify-write state.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&str>,
    new: &str,
    ttl: Option<Duration>,
) -> Result<bool, StoreError> {
    wit::compare_and_swap(key, expected, new, ttl.map(millis)).map_err(Into::into)
}

/// A TTL in whole milliseconds, rounded up so that a short TTL is not zero.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(StoreError::Full.to_string(), "the store is full");
        let error: Box<dyn std::error::Error> = Box::new(StoreError::NotANumber);
        assert!(error.to_string().contains("whole number"));
    }
}
