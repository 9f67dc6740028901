//! The key-value store shared by all instances of a plugin: counters and
//! small values with a time to live, what rate limits and alert windows need.
//!
//! It lives in the gateway, not in a plugin instance or a config generation,
//! so its content survives instance recycling and module reloads. Each plugin
//! has its own namespace. Every operation is atomic (one shard lock held for
//! the read-modify-write). Expired entries are invisible at once and removed
//! by [`SharedStore::sweep`], which the gateway runs periodically, so memory
//! stays bounded by live keys and by `limits.state_max_entries`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use crate::clock::Clock;

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `increment` on a value that is not a whole number.
    #[error("value is not a whole number")]
    NotANumber,
    /// The store holds its maximum number of entries.
    #[error("store is full")]
    Full,
    /// The key or the value is over its size limit.
    #[error("key or value too large")]
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Int(i64),
    Text(String),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Text(s) => s.clone(),
        }
    }

    fn matches(&self, expected: &str) -> bool {
        match self {
            Value::Int(n) => expected.parse::<i64>().is_ok_and(|e| e == *n),
            Value::Text(s) => s == expected,
        }
    }

    fn from_text(text: String) -> Self {
        // Whole numbers are kept as numbers so `increment` need not parse.
        match text.parse::<i64>() {
            Ok(n) if n.to_string() == text => Value::Int(n),
            _ => Value::Text(text),
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Option<u64>,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// The shared store. Cheap to share behind an `Arc`.
pub struct SharedStore {
    map: DashMap<String, Entry>,
    len: AtomicUsize,
    max_entries: usize,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

fn full_key(namespace: &str, key: &str) -> Result<String, StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::TooLarge);
    }
    let mut k = String::with_capacity(namespace.len() + 1 + key.len());
    k.push_str(namespace);
    k.push('\0');
    k.push_str(key);
    Ok(k)
}

fn expiry(now: u64, ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.map(|ttl| now.saturating_add(ttl))
}

impl SharedStore {
    /// An empty store holding at most `max_entries` entries.
    pub fn new(max_entries: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            max_entries,
            clock,
        }
    }

    /// Live and expired-but-not-swept entries.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reserve(&self) -> Result<(), StoreError> {
        let reserved = self
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_entries).then_some(n + 1)
            });
        reserved.map(|_| ()).map_err(|_| StoreError::Full)
    }

    /// The value of `key`, if present and live.
    pub fn get(&self, namespace: &str, key: &str) -> Option<String> {
        let k = full_key(namespace, key).ok()?;
        let now = self.clock.now_ms();
        self.map
            .get(&k)
            .filter(|e| e.live(now))
            .map(|e| e.value.text())
    }

    /// Sets `key` to `value` with an optional time to live.
    pub fn set(
        &self,
        namespace: &str,
        key: &str,
        value: String,
        ttl_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge);
        }
        let k = full_key(namespace, key)?;
        let entry = Entry {
            value: Value::from_text(value),
            expires_at: expiry(self.clock.now_ms(), ttl_ms),
        };
        match self.map.entry(k) {
            MapEntry::Occupied(mut o) => {
                o.insert(entry);
            }
            MapEntry::Vacant(v) => {
                self.reserve()?;
                v.insert(entry);
            }
        }
        Ok(())
    }

    /// Removes `key`; true if it was present and live.
    pub fn delete(&self, namespace: &str, key: &str) -> bool {
        let Ok(k) = full_key(namespace, key) else {
            return false;
        };
        let now = self.clock.now_ms();
        match self.map.remove(&k) {
            Some((_, entry)) => {
                self.len.fetch_sub(1, Ordering::AcqRel);
                entry.live(now)
            }
            None => false,
        }
    }

    /// Adds `delta` to the number at `key`; a missing or expired key starts
    /// at 0 with `ttl_ms`, an existing one keeps its expiry.
    pub fn increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, StoreError> {
        let k = full_key(namespace, key)?;
        let now = self.clock.now_ms();
        match self.map.entry(k) {
            MapEntry::Occupied(mut o) => {
                let entry = o.get_mut();
                if !entry.live(now) {
                    *entry = Entry {
                        value: Value::Int(delta),
                        expires_at: expiry(now, ttl_ms),
                    };
                    return Ok(delta);
                }
                match &mut entry.value {
                    Value::Int(n) => {
                        *n = n.saturating_add(delta);
                        Ok(*n)
                    }
                    Value::Text(_) => Err(StoreError::NotANumber),
                }
            }
            MapEntry::Vacant(v) => {
                self.reserve()?;
                v.insert(Entry {
                    value: Value::Int(delta),
                    expires_at: expiry(now, ttl_ms),
                });
                Ok(delta)
            }
        }
    }

    /// Sets `key` to `new` if its live value is `expected` (`None`: absent).
    pub fn compare_and_swap(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<&str>,
        new: String,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        if new.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge);
        }
        let k = full_key(namespace, key)?;
        let now = self.clock.now_ms();
        let entry = Entry {
            value: Value::from_text(new),
            expires_at: expiry(now, ttl_ms),
        };
        match self.map.entry(k) {
            MapEntry::Occupied(mut o) => {
                let current = o.get();
                let matches = match (current.live(now), expected) {
                    (false, None) => true,
                    (true, Some(e)) => current.value.matches(e),
                    _ => false,
                };
                if matches {
                    o.insert(entry);
                }
                Ok(matches)
            }
            MapEntry::Vacant(v) => {
                if expected.is_some() {
                    return Ok(false);
                }
                self.reserve()?;
                v.insert(entry);
                Ok(true)
            }
        }
    }

    /// Removes expired entries; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        let mut removed = 0;
        self.map.retain(|_, e| {
            let keep = e.live(now);
            if !keep {
                removed += 1;
            }
            keep
        });
        self.len.fetch_sub(removed, Ordering::AcqRel);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn store(max: usize) -> (SharedStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000));
        (SharedStore::new(max, clock.clone()), clock)
    }

    #[test]
    fn increment_is_a_fixed_window_with_ttl() {
        let (s, clock) = store(10);
        assert_eq!(s.increment("p", "k", 1, Some(100)), Ok(1));
        clock.advance(50);
        assert_eq!(s.increment("p", "k", 1, Some(100)), Ok(2));
        clock.advance(50);
        assert_eq!(s.increment("p", "k", 1, Some(100)), Ok(1), "window expired");
        assert_eq!(s.get("p", "k").as_deref(), Some("1"));
    }

    #[test]
    fn namespaces_are_separate() {
        let (s, _) = store(10);
        s.set("a", "k", "1".into(), None).expect("set");
        assert_eq!(s.get("b", "k"), None);
        assert_eq!(s.get("a", "k").as_deref(), Some("1"));
    }

    #[test]
    fn increment_on_text_is_an_error() {
        let (s, _) = store(10);
        s.set("p", "k", "abc".into(), None).expect("set");
        assert_eq!(s.increment("p", "k", 1, None), Err(StoreError::NotANumber));
    }

    #[test]
    fn compare_and_swap_only_on_match() {
        let (s, clock) = store(10);
        assert_eq!(
            s.compare_and_swap("p", "k", None, "1".into(), Some(10)),
            Ok(true)
        );
        assert_eq!(
            s.compare_and_swap("p", "k", None, "2".into(), None),
            Ok(false)
        );
        assert_eq!(
            s.compare_and_swap("p", "k", Some("0"), "2".into(), None),
            Ok(false)
        );
        assert_eq!(
            s.compare_and_swap("p", "k", Some("1"), "2".into(), Some(10)),
            Ok(true)
        );
        clock.advance(10);
        assert_eq!(
            s.compare_and_swap("p", "k", None, "x".into(), None),
            Ok(true),
            "expired counts as absent"
        );
    }

    #[test]
    fn the_store_is_bounded_and_sweep_frees_room() {
        let (s, clock) = store(2);
        s.set("p", "a", "1".into(), Some(5)).expect("room");
        s.set("p", "b", "1".into(), None).expect("room");
        assert_eq!(s.set("p", "c", "1".into(), None), Err(StoreError::Full));
        s.set("p", "b", "2".into(), None)
            .expect("overwrite needs no room");
        clock.advance(5);
        assert_eq!(s.sweep(), 1);
        s.set("p", "c", "1".into(), None).expect("room after sweep");
        assert!(s.delete("p", "c"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let (s, _) = store(10);
        let s = Arc::new(s);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.increment("p", "n", 1, None).expect("increments");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(s.get("p", "n").as_deref(), Some("4000"));
    }
}
