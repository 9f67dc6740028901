//! Holding one request to a list of limits, on a store shared by every
//! instance: the counter keys, the compare-and-swap loop of GCRA, the
//! increments of quotas, and the refunds when another limit refuses.
//!
//! The store is a trait so that the whole evaluation, concurrency aside, is
//! unit tested on the host with an in-memory store.

use std::fmt;
use std::fmt::Write as _;

use portcullis_sdk::store::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::algo::{Gcra, GcraDecision};
use crate::config::{KeyPart, Kind, Limit, MissingKey, OnStoreError};

/// How many times a compare-and-swap is retried when other requests keep
/// changing the same counter, before giving up as a store failure.
const CAS_ATTEMPTS: usize = 64;

/// Keys longer than this are shortened to the limit's id and a SHA-256 of
/// the parts (the store takes keys of up to 512 bytes).
const MAX_KEY: usize = 256;

/// The operations of the shared store that limits use. TTLs are in
/// milliseconds; a TTL of 0 makes an entry that is already expired.
pub(crate) trait Store {
    /// The live value of `key`.
    fn get(&self, key: &str) -> Option<String>;
    /// Adds `delta` to the number at `key` (a new key starts at 0 and gets
    /// `ttl_ms`) and returns the new value.
    fn increment(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StoreError>;
    /// Sets `key` to `new` if its live value is `expected` (`None`: absent).
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError>;
}

/// The state of one policy after a request, as the response fields show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Status {
    /// The policy name.
    #[serde(rename = "n")]
    pub(crate) name: String,
    /// Its quota (`q`): the rate or the quota.
    pub(crate) q: u64,
    /// Requests left (`r`).
    pub(crate) r: u64,
    /// When more quota becomes available (the `t` of the fields), in ms
    /// since the epoch; `None` when nothing is used up.
    #[serde(rename = "at")]
    pub(crate) reset_at_ms: Option<u64>,
}

/// Why a limit could not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The store refused an operation.
    Store(StoreError),
    /// The counter kept changing under the compare-and-swap loop.
    Contention,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Store(error) => error.fmt(f),
            Failure::Contention => write!(
                f,
                "the counter changed under {CAS_ATTEMPTS} compare-and-swap attempts in a row"
            ),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Store(error)
    }
}

/// The decision for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every limit admitted it; their states, in configuration order.
    Allowed(Vec<Status>),
    /// A limit refused it; nothing was counted.
    Denied {
        /// The refusing policy, with `r = 0` and its retry time.
        violated: Status,
        /// When the request would be admitted by that policy, in ms.
        retry_at_ms: u64,
    },
    /// The store failed and `on_store_error = "deny"`; nothing was counted.
    Failed,
}

/// What [`evaluate`] found: the decision and the store failures met on the
/// way (to be logged).
#[derive(Debug)]
pub(crate) struct Evaluation {
    /// The decision.
    pub(crate) outcome: Outcome,
    /// Each failure with the name of the policy concerned.
    pub(crate) failures: Vec<(String, Failure)>,
}

/// What one limit decided.
enum Check {
    /// Admitted and counted; `Commit` undoes the counting.
    Allow(Status, Commit),
    /// Refused, not counted.
    Deny(Status, u64),
}

/// How to give back what an admitted limit counted.
enum Commit {
    /// Move the TAT back by one interval.
    Rate { key: String, gcra: Gcra },
    /// Decrement the window's counter.
    Quota { key: String, ttl_ms: u64 },
}

/// The store key of `limit`'s counter for a request, from its `by` parts
/// (read through `lookup`), or `None` when the limit does not apply (a part
/// is missing and `missing` is `Skip`).
///
/// A key is the limit's id then, for each part, `|tag=len:value`, so no two
/// requests with different values share a key whatever the values hold. A
/// missing part replaced by the client IP is marked with `!`, so that it is
/// never the same counter as a consumer or header that looks like an IP.
pub(crate) fn counter_key(
    limit: &Limit,
    lookup: &mut dyn FnMut(&KeyPart) -> Option<String>,
    missing: MissingKey,
) -> Option<String> {
    let mut key = limit.id.clone();
    for part in &limit.by {
        let (value, marker) = match lookup(part).filter(|v| !v.is_empty()) {
            Some(value) => (value, ""),
            None => match missing {
                MissingKey::Skip => return None,
                MissingKey::ClientIp => (lookup(&KeyPart::Ip)?, "!"),
            },
        };
        let tag = match part {
            KeyPart::Consumer => "c",
            KeyPart::Tenant => "t",
            KeyPart::Ip => "i",
            KeyPart::Route => "r",
            KeyPart::Header(name) => name.as_str(),
        };
        let header = if matches!(part, KeyPart::Header(_)) {
            "h:"
        } else {
            ""
        };
        let _ = write!(key, "|{marker}{header}{tag}={}:{value}", value.len());
    }
    if key.len() > MAX_KEY {
        let digest = Sha256::digest(key.as_bytes());
        let mut short = limit.id.clone();
        short.push_str("|#");
        for byte in digest {
            let _ = write!(short, "{byte:02x}");
        }
        key = short;
    }
    Some(key)
}

/// Holds one request at `now_ms` to `limits` (each with its counter key).
///
/// Rates are checked before quotas, so a request refused by a rate never
/// touches a quota. A request refused by one limit is not counted by any:
/// what the limits checked before it counted is given back. On a store
/// failure the limit is skipped (`Allow`) or the request refused (`Deny`).
pub(crate) fn evaluate(
    store: &impl Store,
    limits: &[(&Limit, String)],
    now_ms: u64,
    on_error: OnStoreError,
) -> Evaluation {
    let mut order: Vec<usize> = (0..limits.len()).collect();
    order.sort_by_key(|&i| matches!(limits[i].0.kind, Kind::Quota { .. }));

    let mut failures = Vec::new();
    let mut admitted: Vec<(usize, Status)> = Vec::with_capacity(limits.len());
    let mut commits: Vec<(usize, Commit)> = Vec::with_capacity(limits.len());
    let mut outcome = None;
    for i in order {
        let (limit, key) = &limits[i];
        match check(store, limit, key, now_ms) {
            Ok(Check::Allow(status, commit)) => {
                admitted.push((i, status));
                commits.push((i, commit));
            }
            Ok(Check::Deny(violated, retry_at_ms)) => {
                outcome = Some(Outcome::Denied {
                    violated,
                    retry_at_ms,
                });
                break;
            }
            Err(failure) => {
                failures.push((limit.name.clone(), failure));
                if on_error == OnStoreError::Deny {
                    outcome = Some(Outcome::Failed);
                    break;
                }
            }
        }
    }
    let outcome = match outcome {
        Some(refused) => {
            for (i, commit) in commits {
                if let Err(failure) = refund(store, commit, now_ms) {
                    failures.push((limits[i].0.name.clone(), failure));
                }
            }
            refused
        }
        None => {
            admitted.sort_by_key(|(i, _)| *i);
            Outcome::Allowed(admitted.into_iter().map(|(_, s)| s).collect())
        }
    };
    Evaluation { outcome, failures }
}

/// Checks and counts one limit.
fn check(store: &impl Store, limit: &Limit, key: &str, now_ms: u64) -> Result<Check, Failure> {
    let status = |r, reset_at_ms| Status {
        name: limit.name.clone(),
        q: limit.q(),
        r,
        reset_at_ms,
    };
    match limit.kind {
        Kind::Rate { gcra, .. } => {
            for _ in 0..CAS_ATTEMPTS {
                let current = store.get(key);
                let tat = current.as_deref().and_then(|v| v.parse::<u64>().ok());
                match gcra.check(tat, now_ms) {
                    GcraDecision::Deny { retry_at_ms } => {
                        return Ok(Check::Deny(status(0, Some(retry_at_ms)), retry_at_ms));
                    }
                    GcraDecision::Allow {
                        new_tat_us,
                        remaining,
                        next_at_ms,
                        ttl_ms,
                    } => {
                        let new = new_tat_us.to_string();
                        if store.compare_and_swap(key, current.as_deref(), &new, ttl_ms)? {
                            let commit = Commit::Rate {
                                key: key.to_owned(),
                                gcra,
                            };
                            return Ok(Check::Allow(status(remaining, Some(next_at_ms)), commit));
                        }
                    }
                }
            }
            Err(Failure::Contention)
        }
        Kind::Quota { quota, calendar } => {
            let (start_ms, end_ms) = calendar.window(now_ms);
            let key = format!("{key}@{}", start_ms / 1000);
            let ttl_ms = end_ms - now_ms;
            let denied = || Check::Deny(status(0, Some(end_ms)), end_ms);
            // Already used up: refuse without touching the counter.
            let used = store.get(&key).and_then(|v| v.parse::<i64>().ok());
            if used.is_some_and(|used| used >= 0 && used.unsigned_abs() >= quota) {
                return Ok(denied());
            }
            let count = store.increment(&key, 1, ttl_ms)?;
            let count = count.max(0).unsigned_abs();
            if count > quota {
                // Concurrent requests took the last units: give this one back.
                store.increment(&key, -1, ttl_ms)?;
                return Ok(denied());
            }
            Ok(Check::Allow(
                status(quota - count, Some(end_ms)),
                Commit::Quota { key, ttl_ms },
            ))
        }
    }
}

/// Gives back what an admitted limit counted for a request that another
/// limit refused.
fn refund(store: &impl Store, commit: Commit, now_ms: u64) -> Result<(), Failure> {
    match commit {
        Commit::Rate { key, gcra } => {
            for _ in 0..CAS_ATTEMPTS {
                let Some(current) = store.get(&key) else {
                    return Ok(());
                };
                let Some(tat) = current.parse::<u64>().ok() else {
                    return Ok(());
                };
                let Some(new_tat) = gcra.refund(tat, now_ms) else {
                    return Ok(());
                };
                let ttl_ms = (new_tat - now_ms.saturating_mul(1000)).div_ceil(1000);
                if store.compare_and_swap(&key, Some(&current), &new_tat.to_string(), ttl_ms)? {
                    return Ok(());
                }
            }
            Err(Failure::Contention)
        }
        Commit::Quota { key, ttl_ms } => {
            store.increment(&key, -1, ttl_ms)?;
            Ok(())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    /// An in-memory store with the gateway's semantics and a clock the test
    /// moves.
    #[derive(Default)]
    pub(crate) struct MemoryStore {
        entries: RefCell<HashMap<String, (String, u64)>>,
        pub(crate) now_ms: Cell<u64>,
        /// How many more entries may be created (`None`: no limit).
        pub(crate) room: Cell<Option<usize>>,
        /// Makes the next compare-and-swap calls fail as if another
        /// instance had won, this many times.
        pub(crate) lose_races: Cell<usize>,
        /// Added to the next increment of a live counter, as if other
        /// instances had counted between this one's `get` and `increment`.
        pub(crate) others_count: Cell<i64>,
    }

    impl MemoryStore {
        pub(crate) fn at(now_ms: u64) -> Self {
            let store = MemoryStore::default();
            store.now_ms.set(now_ms);
            store
        }

        fn live(&self, key: &str) -> Option<String> {
            let now = self.now_ms.get();
            self.entries
                .borrow()
                .get(key)
                .filter(|(_, expires)| *expires > now)
                .map(|(v, _)| v.clone())
        }

        fn put(&self, key: &str, value: String, ttl_ms: u64) -> Result<(), StoreError> {
            let mut entries = self.entries.borrow_mut();
            if !entries.contains_key(key)
                && let Some(room) = self.room.get()
            {
                if room == 0 {
                    return Err(StoreError::Full);
                }
                self.room.set(Some(room - 1));
            }
            entries.insert(key.to_owned(), (value, self.now_ms.get() + ttl_ms));
            Ok(())
        }

        pub(crate) fn keys(&self) -> Vec<String> {
            self.entries.borrow().keys().cloned().collect()
        }

        pub(crate) fn expiry(&self, key: &str) -> Option<u64> {
            self.entries.borrow().get(key).map(|(_, e)| *e)
        }
    }

    impl Store for MemoryStore {
        fn get(&self, key: &str) -> Option<String> {
            self.live(key)
        }

        fn increment(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StoreError> {
            match self.live(key) {
                Some(value) => {
                    let n: i64 = value.parse().map_err(|_| StoreError::NotANumber)?;
                    let n = n + self.others_count.replace(0);
                    let mut entries = self.entries.borrow_mut();
                    let entry = entries.get_mut(key).expect("live");
                    entry.0 = (n + delta).to_string();
                    Ok(n + delta)
                }
                None => {
                    self.put(key, delta.to_string(), ttl_ms)?;
                    Ok(delta)
                }
            }
        }

        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&str>,
            new: &str,
            ttl_ms: u64,
        ) -> Result<bool, StoreError> {
            if self.lose_races.get() > 0 {
                self.lose_races.set(self.lose_races.get() - 1);
                return Ok(false);
            }
            if self.live(key).as_deref() != expected {
                return Ok(false);
            }
            self.put(key, new.to_owned(), ttl_ms)?;
            Ok(true)
        }
    }

    pub(crate) fn limits(json: &str) -> Vec<Limit> {
        let config: Config = serde_json::from_str(json).expect("valid JSON");
        config.build().expect("valid config").limits
    }

    /// Runs one request for `consumer` through `limits`.
    fn run(
        store: &MemoryStore,
        limits: &[Limit],
        consumer: &str,
        on_error: OnStoreError,
    ) -> Evaluation {
        let keyed: Vec<(&Limit, String)> = limits
            .iter()
            .map(|l| {
                let key = counter_key(
                    l,
                    &mut |part| match part {
                        KeyPart::Consumer => Some(consumer.to_owned()),
                        _ => Some("x".to_owned()),
                    },
                    MissingKey::ClientIp,
                )
                .expect("key");
                (l, key)
            })
            .collect();
        evaluate(store, &keyed, store.now_ms.get(), on_error)
    }

    fn allowed(evaluation: Evaluation) -> Vec<Status> {
        assert!(evaluation.failures.is_empty(), "{:?}", evaluation.failures);
        match evaluation.outcome {
            Outcome::Allowed(statuses) => statuses,
            other => panic!("expected to be allowed, got {other:?}"),
        }
    }

    fn denied(evaluation: Evaluation) -> (Status, u64) {
        match evaluation.outcome {
            Outcome::Denied {
                violated,
                retry_at_ms,
            } => (violated, retry_at_ms),
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    /// 2025-03-14T23:59:58Z
    const LATE: u64 = 1_741_996_798_000;

    #[test]
    fn a_rate_admits_its_burst_then_refills() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"limits":[{"rate":5,"per":"second"}]}"#);
        for r in (0..5).rev() {
            let statuses = allowed(run(&store, &limits, "alice", OnStoreError::Allow));
            assert_eq!(
                statuses,
                [Status {
                    name: "per-second".into(),
                    q: 5,
                    r,
                    reset_at_ms: Some(LATE + 200),
                }]
            );
        }
        let (violated, retry_at) = denied(run(&store, &limits, "alice", OnStoreError::Allow));
        assert_eq!(retry_at, LATE + 200);
        assert_eq!(violated.r, 0);
        assert_eq!(violated.reset_at_ms, Some(LATE + 200));
        // Another consumer has its own bucket.
        allowed(run(&store, &limits, "bob", OnStoreError::Allow));
        // One interval later, exactly one more.
        store.now_ms.set(LATE + 200);
        allowed(run(&store, &limits, "alice", OnStoreError::Allow));
        denied(run(&store, &limits, "alice", OnStoreError::Allow));
    }

    #[test]
    fn every_entry_expires() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"limits":[{"rate":5,"per":"second"},{"quota":3,"per":"day"}]}"#);
        allowed(run(&store, &limits, "alice", OnStoreError::Allow));
        let mut keys = store.keys();
        keys.sort();
        assert_eq!(keys.len(), 2);
        for key in &keys {
            let expiry = store.expiry(key).expect("entry");
            if key.contains("per-second") {
                assert_eq!(expiry, LATE + 200, "the TAT lives until the bucket is full");
            } else {
                assert_eq!(expiry, LATE + 2000, "the quota lives until midnight UTC");
            }
        }
    }

    #[test]
    fn a_quota_resets_at_the_calendar_boundary() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"limits":[{"quota":3,"per":"day"}]}"#);
        let midnight = LATE + 2000;
        for r in [2, 1, 0] {
            let statuses = allowed(run(&store, &limits, "alice", OnStoreError::Allow));
            assert_eq!(statuses[0].r, r);
            assert_eq!(statuses[0].reset_at_ms, Some(midnight));
        }
        let (violated, retry_at) = denied(run(&store, &limits, "alice", OnStoreError::Allow));
        assert_eq!((violated.name.as_str(), retry_at), ("daily", midnight));
        store.now_ms.set(midnight - 1);
        denied(run(&store, &limits, "alice", OnStoreError::Allow));
        store.now_ms.set(midnight);
        let statuses = allowed(run(&store, &limits, "alice", OnStoreError::Allow));
        assert_eq!(statuses[0].r, 2);
        assert_eq!(statuses[0].reset_at_ms, Some(midnight + 86_400_000));
    }

    #[test]
    fn a_quota_overshot_by_concurrent_requests_refuses_and_gives_back() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"limits":[{"quota":3,"per":"hour"}]}"#);
        allowed(run(&store, &limits, "a", OnStoreError::Allow));
        allowed(run(&store, &limits, "a", OnStoreError::Allow));
        // This request reads 2 (one left), but two other instances count
        // before it does: it gets 5, refuses, and gives its unit back.
        store.others_count.set(2);
        let (violated, _) = denied(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(violated.name, "hourly");
        let key =
            counter_key(&limits[0], &mut |_| Some("a".into()), MissingKey::Skip).expect("key");
        let (start, _) = crate::algo::Calendar::Hour.window(LATE);
        assert_eq!(
            store.get(&format!("{key}@{}", start / 1000)).as_deref(),
            Some("4")
        );
    }

    #[test]
    fn a_request_refused_by_one_limit_is_counted_by_none() {
        let store = MemoryStore::at(LATE);
        // The quota is listed first but rates are checked first.
        let limits = limits(r#"{"limits":[{"quota":3,"per":"day"},{"rate":2,"per":"second"}]}"#);
        let statuses = allowed(run(&store, &limits, "a", OnStoreError::Allow));
        let names: Vec<_> = statuses.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["daily", "per-second"], "reported in config order");
        allowed(run(&store, &limits, "a", OnStoreError::Allow));
        // Refused by the rate: the quota is not touched.
        for _ in 0..5 {
            let (violated, _) = denied(run(&store, &limits, "a", OnStoreError::Allow));
            assert_eq!(violated.name, "per-second");
        }
        store.now_ms.set(LATE + 1000);
        let statuses = allowed(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(statuses[0].r, 0, "the third of three");
        // Refused by the quota: the rate is given its unit back.
        let (violated, _) = denied(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(violated.name, "daily");
        let rate = &limits[1];
        let key = counter_key(rate, &mut |_| Some("a".into()), MissingKey::Skip).expect("key");
        let tat: u64 = store.get(&key).expect("tat").parse().expect("number");
        assert_eq!(
            tat,
            (LATE + 1000) * 1000 + 500_000,
            "one unit in use, not two"
        );
    }

    #[test]
    fn a_lost_race_is_retried_and_endless_contention_is_a_failure() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"limits":[{"rate":1,"per":"second"}]}"#);
        store.lose_races.set(CAS_ATTEMPTS - 1);
        allowed(run(&store, &limits, "a", OnStoreError::Allow));
        store.lose_races.set(CAS_ATTEMPTS);
        let evaluation = run(&store, &limits, "b", OnStoreError::Allow);
        assert_eq!(evaluation.outcome, Outcome::Allowed(vec![]));
        assert_eq!(
            evaluation.failures,
            [("per-second".to_owned(), Failure::Contention)]
        );
    }

    #[test]
    fn store_failures_fail_open_or_closed() {
        let limits = limits(r#"{"limits":[{"rate":5,"per":"second"},{"quota":5,"per":"day"}]}"#);
        // Room for the rate's entry only.
        let store = MemoryStore::at(LATE);
        store.room.set(Some(1));
        let evaluation = run(&store, &limits, "a", OnStoreError::Allow);
        assert_eq!(
            evaluation.failures,
            [("daily".to_owned(), Failure::Store(StoreError::Full))]
        );
        let Outcome::Allowed(statuses) = evaluation.outcome else {
            panic!("fails open");
        };
        assert_eq!(statuses.len(), 1, "only the rate could be checked");

        let store = MemoryStore::at(LATE);
        store.room.set(Some(1));
        let evaluation = run(&store, &limits, "a", OnStoreError::Deny);
        assert_eq!(evaluation.outcome, Outcome::Failed);
        // The rate's unit was given back.
        let key =
            counter_key(&limits[0], &mut |_| Some("a".into()), MissingKey::Skip).expect("key");
        assert_eq!(store.get(&key), None, "TAT back at now: expired");
    }

    #[test]
    fn keys_separate_every_part_and_mark_fallbacks() {
        let limit = &limits(
            r#"{"by":["consumer","header:x-tenant","route"],"limits":[{"rate":1,"per":"second"}]}"#,
        )[0];
        let key = |consumer: Option<&str>, tenant: Option<&str>, missing| {
            counter_key(
                limit,
                &mut |part| match part {
                    KeyPart::Consumer => consumer.map(str::to_owned),
                    KeyPart::Header(h) if h == "x-tenant" => tenant.map(str::to_owned),
                    KeyPart::Route => Some("api".into()),
                    KeyPart::Ip => Some("10.0.0.1".into()),
                    other => panic!("unexpected {other:?}"),
                },
                missing,
            )
        };
        let full = key(Some("alice"), Some("acme"), MissingKey::Skip).expect("key");
        assert_eq!(
            full,
            format!("{}|c=5:alice|h:x-tenant=4:acme|r=3:api", limit.id)
        );
        assert_ne!(
            key(Some("a|c=1:b"), Some("x"), MissingKey::Skip),
            key(Some("a"), Some("b|c=1:x"), MissingKey::Skip)
        );
        assert_eq!(key(None, Some("acme"), MissingKey::Skip), None);
        assert_eq!(
            key(Some("alice"), Some(""), MissingKey::Skip),
            None,
            "empty is missing"
        );
        let fallback = key(None, Some("acme"), MissingKey::ClientIp).expect("key");
        assert_eq!(
            fallback,
            format!("{}|!c=8:10.0.0.1|h:x-tenant=4:acme|r=3:api", limit.id)
        );
        assert_ne!(
            Some(fallback),
            key(Some("10.0.0.1"), Some("acme"), MissingKey::ClientIp)
        );
        let long = key(Some(&"x".repeat(600)), Some("acme"), MissingKey::Skip).expect("key");
        assert!(
            long.len() <= MAX_KEY && long.starts_with(&limit.id),
            "{long}"
        );
        let other = key(Some(&"y".repeat(600)), Some("acme"), MissingKey::Skip).expect("key");
        assert_ne!(long, other);
    }

    #[test]
    fn an_empty_by_is_one_counter_for_everybody() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"by":[],"limits":[{"quota":2,"per":"minute"}]}"#);
        allowed(run(&store, &limits, "a", OnStoreError::Allow));
        allowed(run(&store, &limits, "b", OnStoreError::Allow));
        denied(run(&store, &limits, "c", OnStoreError::Allow));
    }

    #[test]
    fn a_corrupt_counter_is_overwritten_or_reported() {
        let store = MemoryStore::at(LATE);
        let rate = limits(r#"{"limits":[{"rate":1,"per":"second"}]}"#);
        let key = counter_key(&rate[0], &mut |_| Some("a".into()), MissingKey::Skip).expect("key");
        store.put(&key, "garbage".into(), 60_000).expect("room");
        allowed(run(&store, &rate, "a", OnStoreError::Allow));
        denied(run(&store, &rate, "a", OnStoreError::Allow));

        let quota = limits(r#"{"limits":[{"quota":1,"per":"hour"}]}"#);
        let key = counter_key(&quota[0], &mut |_| Some("a".into()), MissingKey::Skip).expect("key");
        let (start, _) = crate::algo::Calendar::Hour.window(LATE);
        store
            .put(&format!("{key}@{}", start / 1000), "garbage".into(), 60_000)
            .expect("room");
        let evaluation = run(&store, &quota, "a", OnStoreError::Deny);
        assert_eq!(evaluation.outcome, Outcome::Failed);
        assert_eq!(
            evaluation.failures,
            [("hourly".to_owned(), Failure::Store(StoreError::NotANumber))]
        );
    }
}
