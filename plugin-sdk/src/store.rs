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
//!
//! # Testing code that uses the store
//!
//! Write the logic against the [`Store`] trait: the hooks pass
//! [`Shared`] (the gateway's store), unit tests on the host pass a
//! [`MemoryStore`], which has the same semantics, a clock the test moves,
//! and ways to make the races of concurrent instances happen on demand.
//!
//! ```
//! use std::time::Duration;
//! use portcullis_sdk::store::{MemoryStore, Store, StoreError};
//!
//! /// One more hit in this minute's window; the new count.
//! fn hit(store: &impl Store, who: &str) -> Result<i64, StoreError> {
//!     store.increment(&format!("hits:{who}"), 1, Some(Duration::from_secs(60)))
//! }
//!
//! let store = MemoryStore::at(1_000);
//! assert_eq!(hit(&store, "a"), Ok(1));
//! // Another instance counts between this one's read and its write.
//! store.interleave(|other| {
//!     other.increment("hits:a", 5, None).map(drop)
//! });
//! assert_eq!(hit(&store, "a"), Ok(7));
//! store.advance(60_000);
//! assert_eq!(hit(&store, "a"), Ok(1), "a new window");
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::__private::bindings::portcullis::policy::store as wit;

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreError {
    /// [`increment`] on a value that is not a whole number.
    NotANumber,
    /// The plugin's namespace holds its budget of entries or bytes (each
    /// plugin has its own).
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

/// The store's operations, so that code using the store can be unit tested
/// on the host against a [`MemoryStore`]; [`Shared`] is the gateway's
/// store. The methods are those of the functions of this module, with the
/// same semantics.
pub trait Store {
    /// The value of `key`, if present and not expired ([`get`]).
    fn get(&self, key: &str) -> Option<String>;

    /// Sets `key` to `value`, expiring after `ttl` if given ([`set`]).
    fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StoreError>;

    /// Removes `key`; true if it was present ([`delete`]).
    fn delete(&self, key: &str) -> bool;

    /// Adds `delta` to the whole number at `key` and returns the new value;
    /// a missing or expired key starts at 0 with `ttl` ([`increment`]).
    fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError>;

    /// Sets `key` to `new` only if its value is `expected` (`None`: absent
    /// or expired), expiring after `ttl` if given ([`compare_and_swap`]).
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError>;
}

/// The gateway's store, shared by every instance of the plugin: the
/// functions of this module as a [`Store`]. Only usable inside the
/// gateway.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shared;

impl Store for Shared {
    fn get(&self, key: &str) -> Option<String> {
        get(key)
    }

    fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        set(key, value, ttl)
    }

    fn delete(&self, key: &str) -> bool {
        delete(key)
    }

    fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
        increment(key, delta, ttl)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        compare_and_swap(key, expected, new, ttl)
    }
}

/// The longest key the gateway's store takes, in bytes.
const MAX_KEY_BYTES: usize = 512;
/// The longest value the gateway's store takes, in bytes.
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A write another instance makes, run by [`MemoryStore::interleave`].
type Interleaved = Box<dyn FnOnce(&MemoryStore) -> Result<(), StoreError>>;

/// An in-memory [`Store`] for unit tests on the host, with the semantics
/// of the gateway's store (TTLs, fixed-window counters, the size limits,
/// an entry budget) and a clock the test moves. It can also make happen,
/// on demand, what concurrent instances of a plugin do to each other:
/// lose a compare-and-swap, write between a read and a write, fill the
/// store, fail every write.
///
/// Single-threaded (`Cell`s inside): a test plays the other instances
/// through [`interleave`](Self::interleave) and
/// [`lose_races`](Self::lose_races).
#[derive(Default)]
pub struct MemoryStore {
    /// Value and expiry (ms since the epoch; `None`: never), by key.
    /// Expired entries stay, as in the gateway until its sweep.
    entries: RefCell<HashMap<String, (String, Option<u64>)>>,
    /// The store's clock, in ms since the epoch.
    now_ms: Cell<u64>,
    /// The most entries it holds (`None`: no limit).
    max_entries: Cell<Option<usize>>,
    /// Compare-and-swap calls still to lose.
    races_to_lose: Cell<usize>,
    /// Every write fails with this error while set.
    failing_writes: Cell<Option<StoreError>>,
    /// Run before the next write.
    interleaved: RefCell<Option<Interleaved>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.borrow())
            .field("now_ms", &self.now_ms.get())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store whose clock reads `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        let store = MemoryStore::default();
        store.now_ms.set(now_ms);
        store
    }

    /// The store's clock, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    /// Sets the store's clock (what expires entries) to `now_ms`.
    pub fn set_now(&self, now_ms: u64) {
        self.now_ms.set(now_ms);
    }

    /// Moves the store's clock `ms` forward.
    pub fn advance(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get().saturating_add(ms));
    }

    /// Holds at most `max` entries (expired ones count until they are
    /// overwritten, as in the gateway until its sweep): creating another
    /// fails with [`StoreError::Full`]. `None`: no limit.
    pub fn limit_entries(&self, max: Option<usize>) {
        self.max_entries.set(max);
    }

    /// Makes the next `n` compare-and-swap calls return `false` without
    /// writing, as if another instance had changed the value each time.
    pub fn lose_races(&self, n: usize) {
        self.races_to_lose.set(n);
    }

    /// Makes every write (`set`, `increment`, `compare_and_swap`) fail
    /// with `error` until called with `None`.
    pub fn fail_writes(&self, error: Option<StoreError>) {
        self.failing_writes.set(error);
    }

    /// Runs `write` just before the next write operation, as another
    /// instance writing between this one's read and its write would.
    pub fn interleave(&self, write: impl FnOnce(&MemoryStore) -> Result<(), StoreError> + 'static) {
        *self.interleaved.borrow_mut() = Some(Box::new(write));
    }

    /// The keys of the live entries, sorted.
    pub fn keys(&self) -> Vec<String> {
        let now = self.now_ms.get();
        let mut keys: Vec<String> = self
            .entries
            .borrow()
            .iter()
            .filter(|(_, (_, expires))| live(*expires, now))
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// When `key` expires (ms since the epoch), if it is live and has a
    /// TTL.
    pub fn expiry(&self, key: &str) -> Option<u64> {
        let now = self.now_ms.get();
        self.entries
            .borrow()
            .get(key)
            .and_then(|(_, expires)| expires.filter(|at| *at > now))
    }

    /// Runs the interleaved write, if any, then checks that writes may go
    /// on.
    fn before_write(&self) -> Result<(), StoreError> {
        let interleaved = self.interleaved.borrow_mut().take();
        if let Some(write) = interleaved {
            write(self)?;
        }
        match self.failing_writes.get() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The live value of `key`.
    fn live_value(&self, key: &str) -> Option<String> {
        let now = self.now_ms.get();
        self.entries
            .borrow()
            .get(key)
            .filter(|(_, expires)| live(*expires, now))
            .map(|(value, _)| value.clone())
    }

    /// Writes `key`, checking the sizes and, for a new key, the budget.
    fn put(&self, key: &str, value: String, ttl: Option<Duration>) -> Result<(), StoreError> {
        if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge);
        }
        let mut entries = self.entries.borrow_mut();
        if !entries.contains_key(key)
            && self
                .max_entries
                .get()
                .is_some_and(|max| entries.len() >= max)
        {
            return Err(StoreError::Full);
        }
        let now = self.now_ms.get();
        let expires = ttl.map(|ttl| now.saturating_add(millis(ttl)));
        entries.insert(key.to_owned(), (value, expires));
        Ok(())
    }
}

/// Whether an entry expiring at `expires` is live at `now`.
fn live(expires: Option<u64>, now: u64) -> bool {
    expires.is_none_or(|at| at > now)
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Option<String> {
        self.live_value(key)
    }

    fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        self.before_write()?;
        self.put(key, value.to_owned(), ttl)
    }

    fn delete(&self, key: &str) -> bool {
        let now = self.now_ms.get();
        self.entries
            .borrow_mut()
            .remove(key)
            .is_some_and(|(_, expires)| live(expires, now))
    }

    fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.before_write()?;
        let now = self.now_ms.get();
        let current = self.entries.borrow().get(key).cloned();
        match current {
            Some((value, expires)) if live(expires, now) => {
                let n: i64 = value.parse().map_err(|_| StoreError::NotANumber)?;
                let n = n.saturating_add(delta);
                self.entries
                    .borrow_mut()
                    .insert(key.to_owned(), (n.to_string(), expires));
                Ok(n)
            }
            _ => {
                self.put(key, delta.to_string(), ttl)?;
                Ok(delta)
            }
        }
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.before_write()?;
        if self.races_to_lose.get() > 0 {
            self.races_to_lose.set(self.races_to_lose.get() - 1);
            return Ok(false);
        }
        if self.live_value(key).as_deref() != expected {
            return Ok(false);
        }
        self.put(key, new.to_owned(), ttl)?;
        Ok(true)
    }
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

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn the_memory_store_behaves_like_the_gateways() {
        let store = MemoryStore::at(1_000);
        assert_eq!(store.increment("c", 1, secs(1)), Ok(1));
        store.advance(500);
        assert_eq!(store.increment("c", 2, secs(9)), Ok(3), "keeps its expiry");
        assert_eq!(store.expiry("c"), Some(2_000));
        store.advance(500);
        assert_eq!(store.get("c"), None, "expired at its TTL");
        assert_eq!(store.increment("c", 1, None), Ok(1), "starts again");
        assert_eq!(store.expiry("c"), None);
        assert_eq!(store.compare_and_swap("k", None, "a", secs(1)), Ok(true));
        assert_eq!(store.compare_and_swap("k", None, "b", None), Ok(false));
        assert_eq!(store.compare_and_swap("k", Some("x"), "b", None), Ok(false));
        assert_eq!(store.compare_and_swap("k", Some("a"), "b", None), Ok(true));
        assert_eq!(store.get("k").as_deref(), Some("b"));
        store.set("s", "text", None).expect("set");
        assert_eq!(store.increment("s", 1, None), Err(StoreError::NotANumber));
        assert_eq!(store.keys(), ["c", "k", "s"]);
        assert!(store.delete("s"));
        assert!(!store.delete("s"));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(store.set(&long, "v", None), Err(StoreError::TooLarge));
        let big = "v".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(store.set("k", &big, None), Err(StoreError::TooLarge));
        // A zero TTL makes an entry that is already expired.
        store.set("gone", "x", Some(Duration::ZERO)).expect("set");
        assert_eq!(store.get("gone"), None);
    }

    #[test]
    fn the_memory_store_plays_other_instances_on_demand() {
        let store = MemoryStore::at(0);
        store.lose_races(2);
        assert_eq!(store.compare_and_swap("k", None, "a", None), Ok(false));
        assert_eq!(store.compare_and_swap("k", None, "a", None), Ok(false));
        assert_eq!(store.compare_and_swap("k", None, "a", None), Ok(true));

        // A write between this instance's read and its compare-and-swap.
        let read = store.get("k");
        store.interleave(|other| other.set("k", "theirs", None));
        assert_eq!(
            store.compare_and_swap("k", read.as_deref(), "mine", None),
            Ok(false)
        );
        assert_eq!(store.get("k").as_deref(), Some("theirs"));

        store.limit_entries(Some(1));
        assert_eq!(store.increment("n", 1, None), Err(StoreError::Full));
        assert_eq!(store.set("k", "same key", None), Ok(()));
        store.limit_entries(None);
        store.fail_writes(Some(StoreError::Full));
        assert_eq!(store.increment("n", 1, None), Err(StoreError::Full));
        store.fail_writes(None);
        assert_eq!(store.increment("n", 1, None), Ok(1));
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(StoreError::Full.to_string(), "the store is full");
        let error: Box<dyn std::error::Error> = Box::new(StoreError::NotANumber);
        assert!(error.to_string().contains("whole number"));
    }
}
