//! The store as the detectors use it: the SDK's [`Store`] trait (the
//! gateway's store in the plugin, `MemoryStore` in unit tests), with TTLs
//! in milliseconds and whole-number reads.

use std::time::Duration;

pub(crate) use portcullis_sdk::store::{Shared as HostStore, Store, StoreError};

/// A TTL of `ms` milliseconds, as the store takes it.
pub(crate) fn ttl(ms: u64) -> Option<Duration> {
    Some(Duration::from_millis(ms))
}

/// Whole-number reads on any [`Store`].
pub(crate) trait Counts: Store {
    /// The whole number at `key`, 0 if absent or not a number.
    fn count(&self, key: &str) -> u64 {
        self.get(key)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    }
}

impl<S: Store + ?Sized> Counts for S {}

#[cfg(test)]
mod tests {
    use portcullis_sdk::store::MemoryStore;

    use super::*;

    #[test]
    fn counts_read_whole_numbers_or_zero() {
        let store = MemoryStore::at(1000);
        store.increment("c", 3, ttl(100)).expect("increment");
        store.set("s", "x", None).expect("set");
        assert_eq!(store.count("c"), 3);
        assert_eq!(store.count("s"), 0);
        assert_eq!(store.count("missing"), 0);
        store.set_now(1100);
        assert_eq!(store.count("c"), 0, "expired");
    }
}
