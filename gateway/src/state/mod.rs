//! The key-value store shared by all instances of a plugin: counters and
//! small values with a time to live, what rate limits and alert windows need.
//!
//! It lives in the gateway, not in a plugin instance or a config generation,
//! so its content survives instance recycling and module reloads.
//!
//! - **Namespaces**: each plugin has its own ([`StoreBackend::namespace`]),
//!   with its own budget of entries and bytes ([`Budget`]): one plugin
//!   filling its namespace refuses only its own writes.
//! - **Atomic**: every operation holds one shard lock for its
//!   read-modify-write.
//! - **Expiry in time proportional to what expires**: expired entries are
//!   invisible at once; each entry with a time to live is indexed by the
//!   second it expires in, at most once, and [`StoreBackend::sweep`] (run
//!   every second) visits only the seconds that have passed: the entries
//!   that expired, and those whose expiry moved later since they were
//!   indexed (each is then indexed again, once). It never walks the map.
//! - **One trait**: the host side of the contract's `store` interface sees
//!   only [`StoreBackend`] and [`Namespace`], so a networked backend can
//!   take the in-memory one's place without touching plugins.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use crate::clock::Clock;

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// What an entry costs beyond its key and value, in the byte budget (the
/// map slot, the expiry, the index).
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `increment` on a value that is not a whole number.
    #[error("value is not a whole number")]
    NotANumber,
    /// The plugin's namespace holds its budget of entries or bytes.
    #[error("store is full")]
    Full,
    /// The key or the value is over its size limit.
    #[error("key or value too large")]
    TooLarge,
}

/// How much one namespace may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Entries, live or expired but not yet swept.
    pub max_entries: usize,
    /// Bytes of keys and values, plus [`ENTRY_OVERHEAD_BYTES`] an entry.
    pub max_bytes: usize,
}

/// What one namespace holds, for metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceUsage {
    /// The plugin.
    pub namespace: String,
    /// Entries held (expired ones until swept).
    pub entries: usize,
    /// Bytes held, as the budget counts them.
    pub bytes: usize,
    /// Its budget.
    pub budget: Budget,
}

/// A store of namespaces, one per plugin.
pub trait StoreBackend: Send + Sync + std::fmt::Debug {
    /// The namespace of the plugin `name`, made on first use.
    fn namespace(&self, name: &str) -> Arc<dyn Namespace>;
    /// What every namespace holds.
    fn usage(&self) -> Vec<NamespaceUsage>;
    /// Removes the entries that have expired; returns how many.
    fn sweep(&self) -> usize;
}

/// One plugin's keys. TTLs are in milliseconds; see the contract's `store`
/// interface for the semantics.
pub trait Namespace: Send + Sync {
    /// The value of `key`, if present and live.
    fn get(&self, key: &str) -> Option<String>;
    /// Sets `key` to `value` with an optional time to live.
    fn set(&self, key: &str, value: String, ttl_ms: Option<u64>) -> Result<(), StoreError>;
    /// Removes `key`; true if it was present and live.
    fn delete(&self, key: &str) -> bool;
    /// Adds `delta` to the number at `key`; a missing or expired key starts
    /// at 0 with `ttl_ms`, an existing one keeps its expiry.
    fn increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StoreError>;
    /// Sets `key` to `new` if its live value is `expected` (`None`: absent).
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: String,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StoreError>;
    /// What it holds.
    fn usage(&self) -> NamespaceUsage;
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

    fn len(&self) -> usize {
        match self {
            Value::Int(_) => 8,
            Value::Text(s) => s.len(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Option<u64>,
    /// The second under which the expiry index holds this key, if it does.
    indexed_at: Option<u64>,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// The second an expiry at `ms` falls in, rounded up, so an entry is
/// never visited before it has expired.
fn second_of(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn expiry(now: u64, ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.map(|ttl| now.saturating_add(ttl))
}

/// The in-memory backend.
pub struct InMemoryStore {
    namespaces: DashMap<String, Arc<InMemoryNamespace>>,
    budget: Budget,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("namespaces", &self.namespaces.len())
            .field("budget", &self.budget)
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store whose namespaces each get `budget`.
    pub fn new(budget: Budget, clock: Arc<dyn Clock>) -> Self {
        Self {
            namespaces: DashMap::new(),
            budget,
            clock,
        }
    }

    fn namespace_of(&self, name: &str) -> Arc<InMemoryNamespace> {
        if let Some(ns) = self.namespaces.get(name) {
            return ns.clone();
        }
        self.namespaces
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(InMemoryNamespace {
                    name: name.to_owned(),
                    map: DashMap::new(),
                    entries: AtomicUsize::new(0),
                    bytes: AtomicUsize::new(0),
                    budget: self.budget,
                    clock: self.clock.clone(),
                    expiries: Mutex::new(BTreeMap::new()),
                })
            })
            .clone()
    }
}

impl StoreBackend for InMemoryStore {
    fn namespace(&self, name: &str) -> Arc<dyn Namespace> {
        self.namespace_of(name)
    }

    fn usage(&self) -> Vec<NamespaceUsage> {
        let mut usage: Vec<NamespaceUsage> = self
            .namespaces
            .iter()
            .map(|ns| ns.value().usage())
            .collect();
        usage.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        usage
    }

    fn sweep(&self) -> usize {
        let namespaces: Vec<Arc<InMemoryNamespace>> = self
            .namespaces
            .iter()
            .map(|ns| ns.value().clone())
            .collect();
        namespaces.iter().map(|ns| ns.sweep()).sum()
    }
}

/// One plugin's keys in memory.
struct InMemoryNamespace {
    name: String,
    map: DashMap<Arc<str>, Entry>,
    entries: AtomicUsize,
    bytes: AtomicUsize,
    budget: Budget,
    clock: Arc<dyn Clock>,
    /// Keys by the second they expire in (at most one place per key).
    expiries: Mutex<BTreeMap<u64, Vec<Arc<str>>>>,
}

impl InMemoryNamespace {
    /// Takes room for a new entry of `size` bytes.
    fn reserve(&self, size: usize) -> Result<(), StoreError> {
        let budget = self.budget;
        self.entries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < budget.max_entries).then_some(n + 1)
            })
            .map_err(|_| StoreError::Full)?;
        if self.grow(0, size).is_err() {
            self.entries.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Full);
        }
        Ok(())
    }

    /// Accounts an entry going from `old` to `new` bytes; growth must fit
    /// the budget.
    fn grow(&self, old: usize, new: usize) -> Result<(), StoreError> {
        if new <= old {
            self.bytes.fetch_sub(old - new, Ordering::AcqRel);
            return Ok(());
        }
        let more = new - old;
        let max = self.budget.max_bytes;
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(more).filter(|total| *total <= max)
            })
            .map(|_| ())
            .map_err(|_| StoreError::Full)
    }

    /// After a write found no room: releases the shard lock `guard` holds
    /// (the sweep takes shard locks of its own, and one may be this one),
    /// then sweeps what has expired; true if that made room worth a retry.
    fn sweep_for_room<G>(&self, guard: G) -> bool {
        drop(guard);
        self.sweep() > 0
    }

    /// `set`, once the value is checked. `may_sweep`: when there is no
    /// room, sweep and try once more.
    fn set_value(
        &self,
        key: &str,
        value: Value,
        expires_at: Option<u64>,
        may_sweep: bool,
    ) -> Result<(), StoreError> {
        let size = Self::size(key, &value);
        match self.map.entry(Arc::from(key)) {
            MapEntry::Occupied(mut o) => {
                let old = Self::size(key, &o.get().value);
                self.grow(old, size)?;
                let entry = o.get_mut();
                entry.value = value;
                entry.expires_at = expires_at;
                let key = o.key().clone();
                self.index(&key, o.get_mut());
            }
            MapEntry::Vacant(v) => {
                if let Err(full) = self.reserve(size) {
                    if may_sweep && self.sweep_for_room(v) {
                        return self.set_value(key, value, expires_at, false);
                    }
                    return Err(full);
                }
                let key = v.key().clone();
                let mut entry = Entry {
                    value,
                    expires_at,
                    indexed_at: None,
                };
                self.index(&key, &mut entry);
                v.insert(entry);
            }
        }
        Ok(())
    }

    /// `increment`, once the key is checked. `may_sweep`: when there is no
    /// room, sweep and try once more.
    fn increment_with(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
        may_sweep: bool,
    ) -> Result<i64, StoreError> {
        let now = self.clock.now_ms();
        // The fast path: a live counter, no new key to allocate.
        if let Some(mut entry) = self.map.get_mut(key)
            && entry.live(now)
        {
            return match &mut entry.value {
                Value::Int(n) => {
                    *n = n.saturating_add(delta);
                    Ok(*n)
                }
                Value::Text(_) => Err(StoreError::NotANumber),
            };
        }
        let fresh = |expires_at| Entry {
            value: Value::Int(delta),
            expires_at,
            indexed_at: None,
        };
        match self.map.entry(Arc::from(key)) {
            MapEntry::Occupied(mut o) => {
                let entry = o.get_mut();
                if entry.live(now) {
                    // Made live by another request in between.
                    return match &mut entry.value {
                        Value::Int(n) => {
                            *n = n.saturating_add(delta);
                            Ok(*n)
                        }
                        Value::Text(_) => Err(StoreError::NotANumber),
                    };
                }
                let old = Self::size(key, &entry.value);
                let new = fresh(expiry(now, ttl_ms));
                self.grow(old, Self::size(key, &new.value))?;
                let indexed_at = entry.indexed_at;
                *entry = Entry { indexed_at, ..new };
                let key = o.key().clone();
                self.index(&key, o.get_mut());
                Ok(delta)
            }
            MapEntry::Vacant(v) => {
                let mut entry = fresh(expiry(now, ttl_ms));
                if let Err(full) = self.reserve(Self::size(key, &entry.value)) {
                    if may_sweep && self.sweep_for_room(v) {
                        return self.increment_with(key, delta, ttl_ms, false);
                    }
                    return Err(full);
                }
                let key = v.key().clone();
                self.index(&key, &mut entry);
                v.insert(entry);
                Ok(delta)
            }
        }
    }

    /// `compare_and_swap`, once the value is checked. `may_sweep`: when
    /// there is no room, sweep and try once more.
    fn compare_and_swap_with(
        &self,
        key: &str,
        expected: Option<&str>,
        value: Value,
        expires_at: Option<u64>,
        may_sweep: bool,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let size = Self::size(key, &value);
        // Existing keys (the common case: a bucket updated on every
        // request) without allocating a key.
        if let Some(mut entry) = self.map.get_mut(key) {
            let matches = match (entry.live(now), expected) {
                (false, None) => true,
                (true, Some(e)) => entry.value.matches(e),
                _ => false,
            };
            if matches {
                self.grow(Self::size(key, &entry.value), size)?;
                entry.value = value;
                entry.expires_at = expires_at;
                let key = entry.key().clone();
                self.index(&key, entry.value_mut());
            }
            return Ok(matches);
        }
        if expected.is_some() {
            return Ok(false);
        }
        match self.map.entry(Arc::from(key)) {
            // Made by another request in between: compare with it.
            MapEntry::Occupied(mut o) => {
                let matches = !o.get().live(now);
                if matches {
                    self.grow(Self::size(key, &o.get().value), size)?;
                    let entry = o.get_mut();
                    entry.value = value;
                    entry.expires_at = expires_at;
                    let key = o.key().clone();
                    self.index(&key, o.get_mut());
                }
                Ok(matches)
            }
            MapEntry::Vacant(v) => {
                if let Err(full) = self.reserve(size) {
                    if may_sweep && self.sweep_for_room(v) {
                        return self.compare_and_swap_with(key, expected, value, expires_at, false);
                    }
                    return Err(full);
                }
                let key = v.key().clone();
                let mut entry = Entry {
                    value,
                    expires_at,
                    indexed_at: None,
                };
                self.index(&key, &mut entry);
                v.insert(entry);
                Ok(true)
            }
        }
    }

    fn size(key: &str, value: &Value) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD_BYTES
    }

    /// Indexes `key` under the second its expiry falls in, unless it is
    /// indexed already at that second or earlier (the earlier visit will
    /// find it live and index it again).
    fn index(&self, key: &Arc<str>, entry: &mut Entry) {
        let Some(at) = entry.expires_at.map(second_of) else {
            return;
        };
        if entry.indexed_at.is_some_and(|indexed| indexed <= at) {
            return;
        }
        entry.indexed_at = Some(at);
        let mut expiries = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
        expiries.entry(at).or_default().push(key.clone());
    }

    /// Removes the entries expired by now: visits the index's seconds that
    /// have passed, and only those.
    fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        let due: Vec<Arc<str>> = {
            let mut expiries = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
            // Every second an entry expired by now can be indexed under
            // (`second_of` rounds up): live ones among them are indexed
            // again.
            let later = expiries.split_off(&(second_of(now) + 1));
            std::mem::replace(&mut *expiries, later)
                .into_values()
                .flatten()
                .collect()
        };
        let mut removed = 0;
        for key in due {
            let gone = self.map.remove_if(&key, |_, e| !e.live(now));
            if let Some((key, entry)) = gone {
                self.entries.fetch_sub(1, Ordering::AcqRel);
                self.bytes
                    .fetch_sub(Self::size(&key, &entry.value), Ordering::AcqRel);
                removed += 1;
            } else if let Some(mut entry) = self.map.get_mut(&key) {
                // Still live: its expiry moved later (or went away) since
                // it was indexed.
                entry.indexed_at = None;
                let key = entry.key().clone();
                self.index(&key, entry.value_mut());
            }
        }
        removed
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::TooLarge);
    }
    Ok(())
}

impl Namespace for InMemoryNamespace {
    fn get(&self, key: &str) -> Option<String> {
        let now = self.clock.now_ms();
        self.map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.text())
    }

    fn set(&self, key: &str, value: String, ttl_ms: Option<u64>) -> Result<(), StoreError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge);
        }
        let expires_at = expiry(self.clock.now_ms(), ttl_ms);
        self.set_value(key, Value::from_text(value), expires_at, true)
    }

    fn delete(&self, key: &str) -> bool {
        let now = self.clock.now_ms();
        match self.map.remove(key) {
            Some((key, entry)) => {
                self.entries.fetch_sub(1, Ordering::AcqRel);
                self.bytes
                    .fetch_sub(Self::size(&key, &entry.value), Ordering::AcqRel);
                entry.live(now)
            }
            None => false,
        }
    }

    fn increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StoreError> {
        check_key(key)?;
        self.increment_with(key, delta, ttl_ms, true)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: String,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        check_key(key)?;
        if new.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge);
        }
        let expires_at = expiry(self.clock.now_ms(), ttl_ms);
        self.compare_and_swap_with(key, expected, Value::from_text(new), expires_at, true)
    }

    fn usage(&self) -> NamespaceUsage {
        NamespaceUsage {
            namespace: self.name.clone(),
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            budget: self.budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const ROOMY: Budget = Budget {
        max_entries: 1_000,
        max_bytes: 1 << 20,
    };

    fn store(budget: Budget) -> (InMemoryStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000));
        (InMemoryStore::new(budget, clock.clone()), clock)
    }

    #[test]
    fn increment_is_a_fixed_window_with_ttl() {
        let (s, clock) = store(ROOMY);
        let p = s.namespace("p");
        assert_eq!(p.increment("k", 1, Some(100)), Ok(1));
        clock.advance(50);
        assert_eq!(p.increment("k", 1, Some(100)), Ok(2));
        clock.advance(50);
        assert_eq!(p.increment("k", 1, Some(100)), Ok(1), "window expired");
        assert_eq!(p.get("k").as_deref(), Some("1"));
    }

    #[test]
    fn namespaces_are_separate() {
        let (s, _) = store(ROOMY);
        s.namespace("a").set("k", "1".into(), None).expect("set");
        assert_eq!(s.namespace("b").get("k"), None);
        assert_eq!(s.namespace("a").get("k").as_deref(), Some("1"));
    }

    #[test]
    fn increment_on_text_is_an_error() {
        let (s, _) = store(ROOMY);
        let p = s.namespace("p");
        p.set("k", "abc".into(), None).expect("set");
        assert_eq!(p.increment("k", 1, None), Err(StoreError::NotANumber));
    }

    #[test]
    fn compare_and_swap_only_on_match() {
        let (s, clock) = store(ROOMY);
        let p = s.namespace("p");
        assert_eq!(
            p.compare_and_swap("k", None, "1".into(), Some(10)),
            Ok(true)
        );
        assert_eq!(p.compare_and_swap("k", None, "2".into(), None), Ok(false));
        assert_eq!(
            p.compare_and_swap("k", Some("0"), "2".into(), None),
            Ok(false)
        );
        assert_eq!(
            p.compare_and_swap("k", Some("1"), "2".into(), Some(10)),
            Ok(true)
        );
        clock.advance(10);
        assert_eq!(
            p.compare_and_swap("k", None, "x".into(), None),
            Ok(true),
            "expired counts as absent"
        );
    }

    #[test]
    fn a_namespace_is_bounded_in_entries_and_sweep_frees_room() {
        let (s, clock) = store(Budget {
            max_entries: 2,
            max_bytes: 1 << 20,
        });
        let p = s.namespace("p");
        p.set("a", "1".into(), Some(5)).expect("room");
        p.set("b", "1".into(), None).expect("room");
        assert_eq!(p.set("c", "1".into(), None), Err(StoreError::Full));
        p.set("b", "2".into(), None)
            .expect("overwrite needs no room");
        clock.advance(5);
        // A write that finds no room sweeps what has expired first.
        p.set("c", "1".into(), None).expect("room after the sweep");
        assert!(p.delete("c"));
        assert_eq!(p.usage().entries, 1);
    }

    #[test]
    fn a_write_that_sweeps_never_waits_on_its_own_shard() {
        // Each write below finds the namespace full of expired entries, in
        // every shard, its own among them: the sweep must not need the lock
        // the write holds. Run on a thread, so a deadlock fails the test
        // instead of hanging the run.
        const KEYS: usize = 1_024;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (s, clock) = store(Budget {
                max_entries: KEYS,
                max_bytes: 1 << 20,
            });
            let p = s.namespace("p");
            // Fills the namespace to its budget with entries that expire.
            let fill = |round: &str| {
                for i in 0..KEYS - p.usage().entries {
                    p.set(&format!("{round}{i}"), "1".into(), Some(1_000))
                        .expect("room");
                }
                clock.advance(1_000);
            };
            fill("a");
            let set = p.set("set", "1".into(), None);
            fill("b");
            let increment = p.increment("increment", 1, None);
            fill("c");
            let cas = p.compare_and_swap("cas", None, "1".into(), None);
            let _ = done_tx.send((set, increment, cas, p.usage().entries));
        });
        let outcome = done_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a write that sweeps deadlocked");
        assert_eq!(outcome, (Ok(()), Ok(1), Ok(true), 3));
    }

    #[test]
    fn a_namespace_is_bounded_in_bytes() {
        let budget = Budget {
            max_entries: 100,
            max_bytes: 3 * ENTRY_OVERHEAD_BYTES + 30,
        };
        let (s, _) = store(budget);
        let p = s.namespace("p");
        // Each entry: a 1-byte key, a 10-byte value, the overhead.
        p.set("a", "x".repeat(10), None).expect("room");
        p.set("b", "x".repeat(10), None).expect("room");
        assert_eq!(
            p.set("c", "x".repeat(10), None),
            Err(StoreError::Full),
            "three of them do not fit"
        );
        assert_eq!(
            p.set("a", "x".repeat(100), None),
            Err(StoreError::Full),
            "growing a value counts"
        );
        p.set("a", "x".into(), None).expect("shrinking does");
        p.set("c", "x".repeat(10), None).expect("now it fits");
        assert_eq!(
            p.usage().bytes,
            (1 + 1) + 2 * (1 + 10) + 3 * ENTRY_OVERHEAD_BYTES
        );
    }

    #[test]
    fn one_full_namespace_does_not_refuse_anothers_writes() {
        let (s, _) = store(Budget {
            max_entries: 10,
            max_bytes: 1 << 20,
        });
        let greedy = s.namespace("greedy");
        let mut refused = 0;
        for i in 0..100 {
            if greedy.set(&format!("k{i}"), "v".into(), None).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 90);
        let other = s.namespace("other");
        for i in 0..10 {
            other
                .increment(&format!("n{i}"), 1, None)
                .expect("its own budget");
        }
        let usage = s.usage();
        assert_eq!(usage.len(), 2);
        assert_eq!(
            (usage[0].namespace.as_str(), usage[0].entries),
            ("greedy", 10)
        );
        assert_eq!(
            (usage[1].namespace.as_str(), usage[1].entries),
            ("other", 10)
        );
    }

    #[test]
    fn sweep_visits_only_what_has_expired() {
        let (s, clock) = store(ROOMY);
        let p = s.namespace("p");
        for i in 0..100 {
            p.set(&format!("forever{i}"), "v".into(), None)
                .expect("room");
        }
        for i in 0..10 {
            p.increment(&format!("soon{i}"), 1, Some(1_500))
                .expect("room");
        }
        // Extended before it expires: indexed once, visited at its old
        // second, found live, indexed again.
        p.compare_and_swap("moved", None, "1".into(), Some(500))
            .expect("room");
        p.compare_and_swap("moved", Some("1"), "2".into(), Some(10_000))
            .expect("extended");
        let indexed = |s: &InMemoryStore| -> usize {
            let ns = s.namespace_of("p");
            let expiries = ns.expiries.lock().expect("lock");
            expiries.values().map(Vec::len).sum()
        };
        assert_eq!(indexed(&s), 11, "entries without a TTL are not indexed");
        clock.advance(2_000);
        assert_eq!(s.sweep(), 10);
        assert_eq!(indexed(&s), 1, "the extended key, indexed again");
        assert_eq!(p.get("moved").as_deref(), Some("2"));
        clock.advance(9_000);
        assert_eq!(s.sweep(), 1);
        assert_eq!(p.usage().entries, 100);
        assert_eq!(s.sweep(), 0);
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let (s, _) = store(ROOMY);
        let p = s.namespace("p");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        p.increment("n", 1, None).expect("increments");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(p.get("n").as_deref(), Some("4000"));
    }
}
