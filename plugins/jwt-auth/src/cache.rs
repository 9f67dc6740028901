//! A bounded cache of successful token verifications, so that a client
//! sending the same token on every request pays for one signature
//! verification (about 0.4 ms for RS256 with a 2048-bit key, in wasm) per
//! time to live, not one per request.
//!
//! The key is the SHA-256 of the whole token as presented, signature
//! included: only a byte-identical token can hit, so a token with the same
//! claims and another (forged or merely different) signature is verified
//! in full. Only successes are inserted; a token that fails any check is
//! checked again every time. An entry expires after the configured time to
//! live or at the token's `exp`, whichever comes first, and a hit is still
//! checked against `exp` and `nbf` at the current time by the caller. The
//! cache lives in one plugin instance's memory: each instance has its own,
//! and a configuration change (new keys, a reloaded JWKS) makes new,
//! empty ones.

use std::collections::{HashMap, VecDeque};

use portcullis_sdk::Identity;
use sha2::{Digest as _, Sha256};

/// The cache key: the SHA-256 of the token.
pub(crate) type Key = [u8; 32];

/// The key of `token`, exactly as presented.
pub(crate) fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

/// What verifying a token produced: all a later request with the same
/// token needs, so that the claims themselves are not kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verified {
    /// The identity built from the claims.
    pub(crate) identity: Identity,
    /// The value for each of the plugin's `claims_to_headers` entries, in
    /// their order; `None` where the claim is absent or unusable.
    pub(crate) claim_headers: Vec<Option<String>>,
    /// The token's `exp` (seconds since the epoch), if it has one.
    pub(crate) exp: Option<f64>,
    /// The token's `nbf` (seconds since the epoch), if it has one.
    pub(crate) nbf: Option<f64>,
}

/// One remembered verification.
struct Entry {
    /// What the verification produced.
    verified: Verified,
    /// When the entry stops being used, in ms since the epoch.
    expires_ms: u64,
}

/// Successful verifications by [`Key`], at most `capacity` of them.
pub(crate) struct VerifiedCache {
    /// How long a success is remembered at most, in milliseconds.
    ttl_ms: u64,
    /// The most entries kept.
    capacity: usize,
    /// The entries, by key.
    entries: HashMap<Key, Entry>,
    /// The keys of `entries`, each once, oldest insertion first.
    order: VecDeque<Key>,
}

impl VerifiedCache {
    /// A cache keeping up to `capacity` successes for up to `ttl_ms` each;
    /// either being 0 turns it off.
    pub(crate) fn new(capacity: usize, ttl_ms: u64) -> Self {
        VerifiedCache {
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

    /// The still-unexpired success remembered for `key` at `now_ms`. An
    /// expired entry found on the way is dropped.
    pub(crate) fn get(&mut self, key: &Key, now_ms: u64) -> Option<&Verified> {
        if self
            .entries
            .get(key)
            .is_some_and(|entry| entry.expires_ms <= now_ms)
        {
            self.remove(key);
        }
        self.entries.get(key).map(|entry| &entry.verified)
    }

    /// Remembers that `key` verified as `verified`, until `now_ms + ttl` or
    /// the token's `exp`, whichever is first (nothing is remembered if that
    /// is already past). When full, expired entries make room, and if
    /// there are none, the oldest one does.
    pub(crate) fn insert(&mut self, key: Key, verified: Verified, now_ms: u64) {
        if !self.enabled() {
            return;
        }
        let mut expires_ms = now_ms.saturating_add(self.ttl_ms);
        if let Some(exp) = verified.exp {
            // `as` saturates (and maps NaN to 0); truncating rounds a
            // fractional `exp` down, so an entry never outlives the token.
            expires_ms = expires_ms.min((exp * 1000.0) as u64);
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
        self.entries.insert(
            key,
            Entry {
                verified,
                expires_ms,
            },
        );
        self.order.push_back(key);
    }

    /// The most entries kept.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The longest an entry is kept, in milliseconds.
    #[cfg(test)]
    pub(crate) fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// The number of entries held (expired ones included until dropped).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn verified(consumer: &str, exp: Option<f64>) -> Verified {
        Verified {
            identity: Identity::new(consumer),
            claim_headers: vec![Some(consumer.to_owned()), None],
            exp,
            nbf: None,
        }
    }

    fn consumer(cache: &mut VerifiedCache, key: &Key, now_ms: u64) -> Option<String> {
        cache
            .get(key, now_ms)
            .map(|verified| verified.identity.consumer.clone())
    }

    #[test]
    fn a_success_is_remembered_until_its_ttl_passes() {
        let mut cache = VerifiedCache::new(10, 60_000);
        let key = key("a.b.c");
        assert_eq!(cache.get(&key, NOW_MS), None);
        let far = Some((NOW_MS / 1000 + 3600) as f64);
        cache.insert(key, verified("alice", far), NOW_MS);
        assert_eq!(cache.get(&key, NOW_MS), Some(&verified("alice", far)));
        assert_eq!(
            consumer(&mut cache, &key, NOW_MS + 59_999).as_deref(),
            Some("alice")
        );
        assert_eq!(cache.get(&key, NOW_MS + 60_000), None, "now + ttl");
        assert_eq!(cache.len(), 0, "the expired entry is dropped");
    }

    #[test]
    fn an_entry_never_outlives_the_tokens_exp() {
        let mut cache = VerifiedCache::new(10, 60_000);
        let key = key("a.b.c");
        let exp = (NOW_MS / 1000 + 10) as f64;
        cache.insert(key, verified("alice", Some(exp)), NOW_MS);
        assert!(cache.get(&key, NOW_MS + 9_999).is_some());
        assert_eq!(cache.get(&key, NOW_MS + 10_000), None, "at exp");

        // A fractional exp is rounded down.
        cache.insert(key, verified("alice", Some(exp + 0.5)), NOW_MS);
        assert!(cache.get(&key, NOW_MS + 10_499).is_some());
        assert_eq!(cache.get(&key, NOW_MS + 10_500), None);
    }

    #[test]
    fn an_already_expired_token_is_not_remembered() {
        let mut cache = VerifiedCache::new(10, 60_000);
        let key = key("a.b.c");
        // Still accepted thanks to the leeway, but past its `exp`.
        let exp = (NOW_MS / 1000 - 5) as f64;
        cache.insert(key, verified("alice", Some(exp)), NOW_MS);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get(&key, NOW_MS), None);
        for exp in [f64::NAN, -1.0, 0.0] {
            cache.insert(key, verified("alice", Some(exp)), NOW_MS);
            assert_eq!(cache.len(), 0, "exp = {exp}");
        }
    }

    #[test]
    fn a_token_without_exp_expires_by_ttl() {
        let mut cache = VerifiedCache::new(10, 1_000);
        let key = key("a.b.c");
        cache.insert(key, verified("alice", None), NOW_MS);
        assert!(cache.get(&key, NOW_MS + 999).is_some());
        assert_eq!(cache.get(&key, NOW_MS + 1_000), None);
    }

    #[test]
    fn tokens_differing_in_any_byte_have_different_keys() {
        assert_eq!(key("h.p.sig"), key("h.p.sig"));
        assert_ne!(key("h.p.sig"), key("h.p.sih"));
        assert_ne!(key("h.p.sig"), key("h.p.sig "));
        let mut cache = VerifiedCache::new(10, 60_000);
        cache.insert(key("h.p.sig"), verified("alice", None), NOW_MS);
        assert_eq!(cache.get(&key("h.p.sih"), NOW_MS), None);
    }

    #[test]
    fn the_bound_is_respected_expired_entries_going_first() {
        let mut cache = VerifiedCache::new(2, 60_000);
        let (a, b, c, d) = (key("a"), key("b"), key("c"), key("d"));
        cache.insert(a, verified("a", None), NOW_MS);
        cache.insert(b, verified("b", None), NOW_MS + 1);
        cache.insert(c, verified("c", None), NOW_MS + 2);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&a, NOW_MS + 2), None, "the oldest went");
        assert!(cache.get(&b, NOW_MS + 2).is_some());
        assert!(cache.get(&c, NOW_MS + 2).is_some());

        // `c` expires early (its token's exp): it makes room, not `b`.
        let mut cache = VerifiedCache::new(2, 60_000);
        cache.insert(b, verified("b", None), NOW_MS);
        let exp = (NOW_MS / 1000 + 1) as f64;
        cache.insert(c, verified("c", Some(exp)), NOW_MS);
        cache.insert(d, verified("d", None), NOW_MS + 1_000);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&b, NOW_MS + 1_000).is_some());
        assert!(cache.get(&d, NOW_MS + 1_000).is_some());

        for i in 0..100u32 {
            cache.insert(key(&i.to_string()), verified("x", None), NOW_MS + 2_000);
            assert!(cache.len() <= 2);
            assert_eq!(cache.order.len(), cache.len());
        }
    }

    #[test]
    fn inserting_a_held_key_again_replaces_it() {
        let mut cache = VerifiedCache::new(2, 60_000);
        let (a, b) = (key("a"), key("b"));
        cache.insert(a, verified("old", None), NOW_MS);
        cache.insert(b, verified("b", None), NOW_MS);
        cache.insert(a, verified("new", None), NOW_MS + 10);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.order, [b, a], "a is now the newest");
        assert_eq!(
            consumer(&mut cache, &a, NOW_MS + 60_009).as_deref(),
            Some("new")
        );
    }

    #[test]
    fn a_zero_capacity_or_ttl_turns_the_cache_off() {
        for (capacity, ttl) in [(0, 60_000), (10, 0)] {
            let mut cache = VerifiedCache::new(capacity, ttl);
            assert!(!cache.enabled());
            let key = key("a.b.c");
            cache.insert(key, verified("alice", None), NOW_MS);
            assert_eq!(cache.get(&key, NOW_MS), None);
            assert_eq!(cache.len(), 0);
        }
    }
}
