//! A bounded cache of successful password verifications, so that a client
//! sending the same good credentials on every request pays for one bcrypt
//! or argon2 verification per time to live, not one per request.
//!
//! Only successes are ever inserted: a wrong password is verified again
//! every time. The cache lives in one plugin instance's memory (each
//! instance has its own, and a configuration reload starts with new,
//! empty ones), holds no passwords, and forgets an entry once its time to
//! live has passed.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use sha2::{Digest as _, Sha256};

/// The cache key: a salted SHA-256 of the user name and password.
pub(crate) type Key = [u8; 32];

/// Successful verifications, by [`Key`], each with the index of the user it
/// authenticated and its expiry.
pub(crate) struct VerifiedCache {
    /// A random salt of this instance, so that the keys cannot be matched
    /// against a precomputed table.
    salt: [u8; 16],
    /// How long a success is remembered, in milliseconds.
    ttl_ms: u64,
    /// The most entries kept.
    capacity: usize,
    /// user index and expiry (ms since the epoch), by key.
    entries: HashMap<Key, (usize, u64)>,
    /// Keys in insertion order, which is also expiry order (every entry
    /// gets the same time to live), with the expiry they were inserted
    /// with: evicting the front evicts the entry that expires first.
    order: VecDeque<(Key, u64)>,
}

impl VerifiedCache {
    /// A cache keeping up to `capacity` successes for `ttl_ms` each;
    /// either being 0 turns it off.
    pub(crate) fn new(capacity: usize, ttl_ms: u64) -> Self {
        VerifiedCache {
            salt: random_salt(),
            ttl_ms,
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the cache is on.
    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0 && self.ttl_ms > 0
    }

    /// The key of a user name and password. The user name's length comes
    /// first, so that no two (user, password) pairs share a key.
    pub(crate) fn key(&self, username: &str, password: &[u8]) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        hasher.update((username.len() as u64).to_be_bytes());
        hasher.update(username.as_bytes());
        hasher.update(password);
        hasher.finalize().into()
    }

    /// The user a still-valid success for `key` authenticated.
    pub(crate) fn get(&mut self, key: &Key, now_ms: u64) -> Option<usize> {
        self.evict_expired(now_ms);
        self.entries
            .get(key)
            .filter(|(_, expires)| now_ms < *expires)
            .map(|(user, _)| *user)
    }

    /// Remembers that `key` authenticated `user`, until `now_ms + ttl`.
    /// When full, the entry that expires first makes room.
    pub(crate) fn insert(&mut self, key: Key, user: usize, now_ms: u64) {
        if !self.enabled() {
            return;
        }
        self.evict_expired(now_ms);
        while self.entries.len() >= self.capacity {
            if !self.pop_front() {
                break;
            }
        }
        let expires = now_ms.saturating_add(self.ttl_ms);
        self.entries.insert(key, (user, expires));
        self.order.push_back((key, expires));
    }

    /// The number of entries held (expired ones included until evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries that have expired at `now_ms`.
    fn evict_expired(&mut self, now_ms: u64) {
        while self
            .order
            .front()
            .is_some_and(|(_, expires)| *expires <= now_ms)
        {
            self.pop_front();
        }
    }

    /// Drops the oldest insertion; false if there was none. An entry
    /// inserted again later (after expiring) is kept: only the insertion
    /// whose expiry matches goes.
    fn pop_front(&mut self) -> bool {
        let Some((key, expires)) = self.order.pop_front() else {
            return false;
        };
        if self
            .entries
            .get(&key)
            .is_some_and(|(_, current)| *current == expires)
        {
            self.entries.remove(&key);
        }
        true
    }
}

/// 16 random bytes, from the keys of two std `RandomState`s (which the
/// standard library seeds from the platform's random source, WASI's
/// `random` in wasm). Not for cryptographic keys: it only has to differ
/// between instances and be unknown in advance.
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

    #[test]
    fn a_success_is_remembered_until_its_ttl_passes() {
        let mut cache = VerifiedCache::new(10, 1_000);
        let key = cache.key("alice", b"pw");
        assert_eq!(cache.get(&key, 5_000), None);
        cache.insert(key, 3, 5_000);
        assert_eq!(cache.get(&key, 5_000), Some(3));
        assert_eq!(cache.get(&key, 5_999), Some(3));
        assert_eq!(cache.get(&key, 6_000), None, "expired at now + ttl");
        assert_eq!(cache.len(), 0, "expired entries are evicted");
    }

    #[test]
    fn keys_separate_users_and_passwords() {
        let cache = VerifiedCache::new(10, 1_000);
        assert_ne!(cache.key("alice", b"pw"), cache.key("alice", b"pW"));
        assert_ne!(cache.key("alice", b"pw"), cache.key("bob", b"pw"));
        assert_ne!(cache.key("ab", b"c"), cache.key("a", b"bc"));
        assert_eq!(cache.key("alice", b"pw"), cache.key("alice", b"pw"));
        let other = VerifiedCache::new(10, 1_000);
        assert_ne!(
            cache.key("alice", b"pw"),
            other.key("alice", b"pw"),
            "each instance salts its keys"
        );
    }

    #[test]
    fn a_full_cache_drops_the_oldest_entry() {
        let mut cache = VerifiedCache::new(2, 1_000);
        let (a, b, c) = (
            cache.key("a", b"1"),
            cache.key("b", b"2"),
            cache.key("c", b"3"),
        );
        cache.insert(a, 0, 100);
        cache.insert(b, 1, 200);
        cache.insert(c, 2, 300);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&a, 300), None);
        assert_eq!(cache.get(&b, 300), Some(1));
        assert_eq!(cache.get(&c, 300), Some(2));
    }

    #[test]
    fn an_entry_inserted_again_after_expiry_survives_its_old_slot() {
        let mut cache = VerifiedCache::new(10, 1_000);
        let a = cache.key("a", b"1");
        cache.insert(a, 0, 0);
        assert_eq!(cache.get(&a, 1_000), None);
        cache.insert(a, 0, 1_000);
        cache.insert(cache.key("b", b"2"), 1, 1_500);
        assert_eq!(cache.get(&a, 1_999), Some(0));
        assert_eq!(cache.get(&a, 2_000), None);
    }

    #[test]
    fn a_zero_capacity_or_ttl_turns_the_cache_off() {
        for (capacity, ttl) in [(0, 1_000), (10, 0)] {
            let mut cache = VerifiedCache::new(capacity, ttl);
            assert!(!cache.enabled());
            let key = cache.key("a", b"1");
            cache.insert(key, 0, 0);
            assert_eq!(cache.get(&key, 0), None);
            assert_eq!(cache.len(), 0);
        }
    }
}
