//! A bounded cache of successful credential verifications, so that a
//! client sending the same good credentials on every request pays for one
//! expensive check (a bcrypt hash, an RSA signature) per time to live, not
//! one per request.
//!
//! - **Keyed by a digest**: the key is a SHA-256 of the credentials under a
//!   random salt of this cache, so it holds no secret and its keys cannot
//!   be matched against a precomputed table. Only byte-identical
//!   credentials hit.
//! - **Never past an expiry**: an entry lasts the cache's time to live at
//!   most, and never past the expiry given with it (a token's `exp`).
//! - **Failures are never cached**: a caller inserts only what verified; a
//!   wrong password or a bad token is checked again every time.
//! - **Bounded**: when full, expired entries make room first, then the
//!   oldest insertion.
//!
//! A cache lives in one plugin instance's memory (an instance serves one
//! request at a time, so a `RefCell` around it is enough); a configuration
//! reload makes new, empty ones.
//!
//! ```
//! use portcullis_plugin_kit::cache::VerifiedCache;
//!
//! let mut cache: VerifiedCache<&str> = VerifiedCache::new(1024, 60_000);
//! let key = cache.key(&[b"alice", b"secret"]);
//! assert_eq!(cache.get(&key, 1_000), None);
//! // ... the expensive check passed:
//! cache.insert(key, "alice", 1_000, None);
//! assert_eq!(cache.get(&key, 60_999), Some(&"alice"));
//! assert_eq!(cache.get(&key, 61_000), None, "the time to live is over");
//! ```

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use sha2::{Digest as _, Sha256};

/// A cache key: the salted SHA-256 of the credentials.
pub type Key = [u8; 32];

/// One remembered verification.
#[derive(Debug)]
struct Entry<V> {
    /// What the verification produced.
    value: V,
    /// When the entry stops being used, in ms since the epoch.
    expires_ms: u64,
}

/// Successful verifications by [`Key`], at most `capacity` of them, each
/// for `ttl_ms` at most.
#[derive(Debug)]
pub struct VerifiedCache<V> {
    /// A random salt of this cache, mixed into every key.
    salt: [u8; 16],
    /// How long a success is remembered at most, in milliseconds.
    ttl_ms: u64,
    /// The most entries kept.
    capacity: usize,
    /// The entries, by key.
    entries: HashMap<Key, Entry<V>>,
    /// The keys of `entries`, each once, oldest insertion first.
    order: VecDeque<Key>,
}

impl<V> VerifiedCache<V> {
    /// A cache keeping up to `capacity` successes for up to `ttl_ms` each;
    /// either being 0 turns it off.
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        VerifiedCache {
            salt: random_salt(),
            ttl_ms,
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        self.capacity > 0 && self.ttl_ms > 0
    }

    /// The key of credentials made of `parts` (a user name and a password;
    /// a whole token). Each part's length goes in before it, so that no
    /// two different lists of parts share a key (`["ab", "c"]` and
    /// `["a", "bc"]` differ).
    pub fn key(&self, parts: &[&[u8]]) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    /// The still-unexpired success remembered for `key` at `now_ms`. An
    /// expired entry found on the way is dropped.
    pub fn get(&mut self, key: &Key, now_ms: u64) -> Option<&V> {
        if self
            .entries
            .get(key)
            .is_some_and(|entry| entry.expires_ms <= now_ms)
        {
            self.remove(key);
        }
        self.entries.get(key).map(|entry| &entry.value)
    }

    /// Remembers that `key` verified as `value`, until `now_ms + ttl` or
    /// `not_after_ms` (the credential's own expiry), whichever is first;
    /// nothing is remembered if that is already past, or if the cache is
    /// off. Call it only for successes. When full, expired entries make
    /// room, and if there are none, the oldest one does.
    pub fn insert(&mut self, key: Key, value: V, now_ms: u64, not_after_ms: Option<u64>) {
        if !self.enabled() {
            return;
        }
        let mut expires_ms = now_ms.saturating_add(self.ttl_ms);
        if let Some(not_after) = not_after_ms {
            expires_ms = expires_ms.min(not_after);
        }
        if expires_ms <= now_ms {
            return;
        }
        self.remove(&key);
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, entry| entry.expires_ms > now_ms);
            let entries = &self.entries;
            self.order.retain(|key| entries.contains_key(key));
        }
        while self.entries.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, Entry { value, expires_ms });
        self.order.push_back(key);
    }

    /// The number of entries held (expired ones included until dropped).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The longest an entry is kept, in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Forgets `key`, if it is held.
    fn remove(&mut self, key: &Key) {
        if self.entries.remove(key).is_some()
            && let Some(at) = self.order.iter().position(|k| k == key)
        {
            self.order.remove(at);
        }
    }
}

/// 16 random bytes, from the keys of two std `RandomState`s (which the
/// standard library seeds from the platform's random source, WASI's
/// `random` in wasm). Not for cryptographic keys: it only has to differ
/// between caches and be unknown in advance.
fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    let (first, second) = salt.split_at_mut(8);
    first.copy_from_slice(&RandomState::new().hash_one(0u8).to_le_bytes());
    second.copy_from_slice(&RandomState::new().hash_one(1u8).to_le_bytes());
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn cache(capacity: usize, ttl_ms: u64) -> VerifiedCache<&'static str> {
        VerifiedCache::new(capacity, ttl_ms)
    }

    #[test]
    fn a_success_is_remembered_until_its_ttl_passes() {
        let mut cache = cache(10, 60_000);
        let key = cache.key(&[b"a.b.c"]);
        assert_eq!(cache.get(&key, NOW), None);
        cache.insert(key, "alice", NOW, None);
        assert_eq!(cache.get(&key, NOW + 59_999), Some(&"alice"));
        assert_eq!(cache.get(&key, NOW + 60_000), None, "now + ttl");
        assert!(cache.is_empty(), "the expired entry is dropped");
    }

    #[test]
    fn an_entry_never_outlives_its_expiry() {
        let mut cache = cache(10, 60_000);
        let key = cache.key(&[b"a.b.c"]);
        cache.insert(key, "alice", NOW, Some(NOW + 10_000));
        assert!(cache.get(&key, NOW + 9_999).is_some());
        assert_eq!(cache.get(&key, NOW + 10_000), None, "at the expiry");
        // Already expired (or expiring now): not remembered.
        for not_after in [NOW - 5_000, NOW, 0] {
            cache.insert(key, "alice", NOW, Some(not_after));
            assert_eq!(cache.len(), 0, "not after {not_after}");
        }
    }

    #[test]
    fn keys_separate_parts_and_caches() {
        let cache = cache(10, 1_000);
        assert_eq!(cache.key(&[b"alice", b"pw"]), cache.key(&[b"alice", b"pw"]));
        assert_ne!(cache.key(&[b"alice", b"pw"]), cache.key(&[b"alice", b"pW"]));
        assert_ne!(cache.key(&[b"alice", b"pw"]), cache.key(&[b"bob", b"pw"]));
        assert_ne!(cache.key(&[b"ab", b"c"]), cache.key(&[b"a", b"bc"]));
        assert_ne!(cache.key(&[b"h.p.sig"]), cache.key(&[b"h.p.sig "]));
        let other = VerifiedCache::<()>::new(10, 1_000);
        assert_ne!(
            cache.key(&[b"alice", b"pw"]),
            other.key(&[b"alice", b"pw"]),
            "each cache salts its keys"
        );
    }

    #[test]
    fn the_bound_is_respected_expired_entries_going_first() {
        let mut cache = cache(2, 60_000);
        let [a, b, c, d] = [b"a", b"b", b"c", b"d"].map(|k| cache.key(&[k]));
        cache.insert(a, "a", NOW, None);
        cache.insert(b, "b", NOW + 1, None);
        cache.insert(c, "c", NOW + 2, None);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&a, NOW + 2), None, "the oldest went");
        assert!(cache.get(&b, NOW + 2).is_some());
        assert!(cache.get(&c, NOW + 2).is_some());

        // `c` expires early (its own expiry): it makes room, not `b`.
        let mut cache = self::cache(2, 60_000);
        cache.insert(b, "b", NOW, None);
        cache.insert(c, "c", NOW, Some(NOW + 1_000));
        cache.insert(d, "d", NOW + 1_000, None);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&b, NOW + 1_000).is_some());
        assert!(cache.get(&d, NOW + 1_000).is_some());

        for i in 0..100u32 {
            let key = cache.key(&[&i.to_be_bytes()]);
            cache.insert(key, "x", NOW + 2_000, None);
            assert!(cache.len() <= 2);
            assert_eq!(cache.order.len(), cache.len());
        }
    }

    #[test]
    fn inserting_a_held_key_again_replaces_it() {
        let mut cache = cache(2, 60_000);
        let [a, b] = [b"a", b"b"].map(|k| cache.key(&[k]));
        cache.insert(a, "old", NOW, None);
        cache.insert(b, "b", NOW, None);
        cache.insert(a, "new", NOW + 10, None);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.order, [b, a], "a is now the newest");
        assert_eq!(cache.get(&a, NOW + 60_009), Some(&"new"));
        // An entry inserted again after expiring lives its new life.
        let mut cache = self::cache(10, 1_000);
        cache.insert(a, "a", 0, None);
        assert_eq!(cache.get(&a, 1_000), None);
        cache.insert(a, "a", 1_000, None);
        assert_eq!(cache.get(&a, 1_999), Some(&"a"));
    }

    #[test]
    fn a_zero_capacity_or_ttl_turns_the_cache_off() {
        for (capacity, ttl) in [(0, 60_000), (10, 0)] {
            let mut cache = cache(capacity, ttl);
            assert!(!cache.enabled());
            let key = cache.key(&[b"a.b.c"]);
            cache.insert(key, "alice", NOW, None);
            assert_eq!(cache.get(&key, NOW), None);
            assert_eq!(cache.len(), 0);
        }
    }
}
