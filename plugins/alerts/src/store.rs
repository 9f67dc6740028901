//! The store operations the detectors use, behind a trait so that their
//! logic runs on the host in unit tests against an in-memory fake.

use std::time::Duration;

pub(crate) use portcullis_sdk::store::StoreError;

/// The gateway's shared key-value store, as the detectors use it. TTLs are
/// in milliseconds; see `portcullis_sdk::store` for the semantics.
pub(crate) trait Store {
    /// The value of `key`, if present and not expired.
    fn get(&self, key: &str) -> Option<String>;

    /// Sets `key` to `value`, expiring after `ttl_ms` if given.
    fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) -> Result<(), StoreError>;

    /// Adds `delta` to the whole number at `key`; a new key gets `ttl_ms`.
    fn increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StoreError>;

    /// Sets `key` to `new` only if its value is `expected` (`None`: absent).
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StoreError>;

    /// The whole number at `key`, 0 if absent or not a number.
    fn count(&self, key: &str) -> u64 {
        self.get(key)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    }
}

/// The gateway's store, through the SDK (only usable inside the gateway).
pub(crate) struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> Option<String> {
        portcullis_sdk::store::get(key)
    }

    fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) -> Result<(), StoreError> {
        portcullis_sdk::store::set(key, value, ttl_ms.map(Duration::from_millis))
    }

    fn increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StoreError> {
        portcullis_sdk::store::increment(key, delta, ttl_ms.map(Duration::from_millis))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        portcullis_sdk::store::compare_and_swap(
            key,
            expected,
            new,
            ttl_ms.map(Duration::from_millis),
        )
    }
}

/// An in-memory store with a clock the test sets, for unit tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::{Store, StoreError};

    /// Entries with their expiry (ms), and the current time.
    #[derive(Default)]
    pub(crate) struct FakeStore {
        entries: RefCell<HashMap<String, (String, Option<u64>)>>,
        now: Cell<u64>,
        /// When set, every write fails with this error.
        pub(crate) fail_writes: Cell<Option<StoreError>>,
    }

    impl FakeStore {
        /// An empty store whose clock reads `now`.
        pub(crate) fn at(now: u64) -> Self {
            let store = FakeStore::default();
            store.now.set(now);
            store
        }

        /// Moves the store's clock (what expires entries) to `now`.
        pub(crate) fn set_now(&self, now: u64) {
            self.now.set(now);
        }

        /// The number of live entries whose key starts with `prefix`.
        pub(crate) fn live_with_prefix(&self, prefix: &str) -> usize {
            let now = self.now.get();
            self.entries
                .borrow()
                .iter()
                .filter(|(k, (_, exp))| k.starts_with(prefix) && exp.is_none_or(|e| now < e))
                .count()
        }

        fn live(&self, key: &str) -> Option<String> {
            let now = self.now.get();
            self.entries
                .borrow()
                .get(key)
                .filter(|(_, exp)| exp.is_none_or(|e| now < e))
                .map(|(value, _)| value.clone())
        }

        fn write(&self, key: &str, value: String, ttl_ms: Option<u64>) -> Result<(), StoreError> {
            if let Some(error) = self.fail_writes.get() {
                return Err(error);
            }
            let expiry = ttl_ms.map(|ttl| self.now.get() + ttl);
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (value, expiry));
            Ok(())
        }
    }

    impl Store for FakeStore {
        fn get(&self, key: &str) -> Option<String> {
            self.live(key)
        }

        fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) -> Result<(), StoreError> {
            self.write(key, value.to_owned(), ttl_ms)
        }

        fn increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StoreError> {
            if let Some(error) = self.fail_writes.get() {
                return Err(error);
            }
            let now = self.now.get();
            let mut entries = self.entries.borrow_mut();
            let live = entries
                .get(key)
                .filter(|(_, exp)| exp.is_none_or(|e| now < e))
                .cloned();
            let (value, expiry) = match live {
                Some((value, expiry)) => {
                    let n: i64 = value.parse().map_err(|_| StoreError::NotANumber)?;
                    (n + delta, expiry)
                }
                None => (delta, ttl_ms.map(|ttl| now + ttl)),
            };
            entries.insert(key.to_owned(), (value.to_string(), expiry));
            Ok(value)
        }

        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&str>,
            new: &str,
            ttl_ms: Option<u64>,
        ) -> Result<bool, StoreError> {
            if self.live(key).as_deref() != expected {
                return Ok(false);
            }
            self.write(key, new.to_owned(), ttl_ms)?;
            Ok(true)
        }
    }

    #[test]
    fn the_fake_behaves_like_the_store() {
        let store = FakeStore::at(1000);
        assert_eq!(store.increment("c", 1, Some(100)), Ok(1));
        store.set_now(1050);
        assert_eq!(
            store.increment("c", 2, Some(100)),
            Ok(3),
            "keeps its expiry"
        );
        store.set_now(1100);
        assert_eq!(store.get("c"), None, "expired");
        assert_eq!(store.increment("c", 1, None), Ok(1));
        assert_eq!(store.compare_and_swap("k", None, "a", Some(10)), Ok(true));
        assert_eq!(store.compare_and_swap("k", None, "b", None), Ok(false));
        assert_eq!(store.compare_and_swap("k", Some("a"), "b", None), Ok(true));
        assert_eq!(store.get("k").as_deref(), Some("b"));
        store.set("s", "x", None).expect("set");
        assert_eq!(store.increment("s", 1, None), Err(StoreError::NotANumber));
        assert_eq!(store.count("c"), 1);
        assert_eq!(store.count("s"), 0);
        assert_eq!(store.count("missing"), 0);
        assert_eq!(store.live_with_prefix("c"), 1);
    }
}
