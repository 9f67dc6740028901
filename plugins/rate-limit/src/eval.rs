//! Holding one request to a list of limits, on a store shared by every
//! instance: the counter keys, the compare-and-swap loop of GCRA, the
//! increments of quotas, the refunds when another limit refuses, and the
//! state of every limit a refused request reports.
//!
//! The store is `portcullis_sdk::store::Store`, so that the whole
//! evaluation, races between instances included, is unit tested on the
//! host with its `MemoryStore`.

use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use portcullis_sdk::store::{Store, StoreError};
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

/// A TTL in milliseconds as the store takes it.
fn ttl(ms: u64) -> Option<Duration> {
    Some(Duration::from_millis(ms))
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
    /// One or more limits refused it; nothing was counted.
    Denied {
        /// The state of every limit that applies to the request (failed
        /// ones aside), in configuration order, none of them counting this
        /// request: a refusing limit with `r = 0` and the time it admits
        /// again, the others as they stand.
        statuses: Vec<Status>,
        /// The names of the refusing limits, in configuration order.
        violated: Vec<String>,
        /// When every refusing limit admits again (the latest of their
        /// times), in ms: what `Retry-After` says.
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

/// What one limit decided about a request.
enum Check {
    /// Admitted and counted; `Commit` undoes the counting.
    Allow(Status, Commit),
    /// Refused, not counted; admits again at the time given.
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
/// Rates are checked before quotas. Once a limit refuses the request, the
/// limits after it are only read (never counted), so that the refusal can
/// report every limit's state and the latest time among all the limits
/// that refuse; what the limits before it counted is given back. A request
/// refused by one limit is thus counted by none. On a store failure the
/// limit is skipped (`Allow`) or the request refused (`Deny`).
pub(crate) fn evaluate(
    store: &impl Store,
    limits: &[(&Limit, String)],
    now_ms: u64,
    on_error: OnStoreError,
) -> Evaluation {
    let mut order: Vec<usize> = (0..limits.len()).collect();
    order.sort_by_key(|&i| matches!(limits[i].0.kind, Kind::Quota { .. }));

    let mut failures = Vec::new();
    // Each limit's state, by position in `limits`, and whether it refuses.
    let mut statuses: Vec<Option<(Status, bool)>> = vec![None; limits.len()];
    let mut commits: Vec<(usize, Commit)> = Vec::with_capacity(limits.len());
    let mut retry_at_ms: Option<u64> = None;
    for i in order {
        let (limit, key) = &limits[i];
        if retry_at_ms.is_some() {
            let (status, refuses) = peek(store, limit, key, now_ms);
            if refuses {
                retry_at_ms = retry_at_ms.max(status.reset_at_ms);
            }
            statuses[i] = Some((status, refuses));
            continue;
        }
        match check(store, limit, key, now_ms) {
            Ok(Check::Allow(status, commit)) => {
                statuses[i] = Some((status, false));
                commits.push((i, commit));
            }
            Ok(Check::Deny(status, at)) => {
                statuses[i] = Some((status, true));
                retry_at_ms = Some(at);
            }
            Err(failure) => {
                failures.push((limit.name.clone(), failure));
                if on_error == OnStoreError::Deny {
                    refund_all(store, limits, commits, now_ms, &mut failures);
                    return Evaluation {
                        outcome: Outcome::Failed,
                        failures,
                    };
                }
            }
        }
    }
    let outcome = match retry_at_ms {
        None => Outcome::Allowed(statuses.into_iter().flatten().map(|(s, _)| s).collect()),
        Some(retry_at_ms) => {
            // The counted limits give their unit back, and report the state
            // without it: one more request left (exact for both algorithms,
            // see `Gcra::peek`), the same reset.
            for (i, _) in &commits {
                if let Some((status, _)) = &mut statuses[*i] {
                    status.r += 1;
                }
            }
            refund_all(store, limits, commits, now_ms, &mut failures);
            let (statuses, refusing): (Vec<Status>, Vec<bool>) =
                statuses.into_iter().flatten().unzip();
            let violated = statuses
                .iter()
                .zip(refusing)
                .filter(|(_, refuses)| *refuses)
                .map(|(status, _)| status.name.clone())
                .collect();
            Outcome::Denied {
                statuses,
                violated,
                retry_at_ms,
            }
        }
    };
    Evaluation { outcome, failures }
}

/// Gives back every counted limit's unit, noting the failures.
fn refund_all(
    store: &impl Store,
    limits: &[(&Limit, String)],
    commits: Vec<(usize, Commit)>,
    now_ms: u64,
    failures: &mut Vec<(String, Failure)>,
) {
    for (i, commit) in commits {
        if let Err(failure) = refund(store, commit, now_ms) {
            failures.push((limits[i].0.name.clone(), failure));
        }
    }
}

/// The status of `limit` for a request without counting it (read only):
/// the state and whether the limit would refuse the request. A counter
/// that cannot be read as a number counts as unused.
fn peek(store: &impl Store, limit: &Limit, key: &str, now_ms: u64) -> (Status, bool) {
    let status = |r, reset_at_ms| Status {
        name: limit.name.clone(),
        q: limit.q(),
        r,
        reset_at_ms: Some(reset_at_ms),
    };
    match limit.kind {
        Kind::Rate { gcra, .. } => {
            let tat = store.get(key).and_then(|v| v.parse::<u64>().ok());
            match gcra.peek(tat, now_ms) {
                Ok((remaining, next_at_ms)) => (status(remaining, next_at_ms), false),
                Err(retry_at_ms) => (status(0, retry_at_ms), true),
            }
        }
        Kind::Quota { quota, window } => {
            let (start_ms, end_ms) = window.window(now_ms);
            let used = store
                .get(&window_key(key, start_ms))
                .and_then(|v| v.parse::<i64>().ok())
                .map_or(0, |used| used.max(0).unsigned_abs());
            let left = quota.saturating_sub(used);
            (status(left, end_ms), left == 0)
        }
    }
}

/// The store key of a quota's counter for the window starting at
/// `start_ms`.
fn window_key(key: &str, start_ms: u64) -> String {
    format!("{key}@{}", start_ms / 1000)
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
                        if store.compare_and_swap(key, current.as_deref(), &new, ttl(ttl_ms))? {
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
        Kind::Quota { quota, window } => {
            let (start_ms, end_ms) = window.window(now_ms);
            let key = window_key(key, start_ms);
            let ttl_ms = end_ms - now_ms;
            let denied = || Check::Deny(status(0, Some(end_ms)), end_ms);
            // Already used up: refuse without touching the counter.
            let used = store.get(&key).and_then(|v| v.parse::<i64>().ok());
            if used.is_some_and(|used| used >= 0 && used.unsigned_abs() >= quota) {
                return Ok(denied());
            }
            let count = store.increment(&key, 1, ttl(ttl_ms))?;
            let count = count.max(0).unsigned_abs();
            if count > quota {
                // Concurrent requests took the last units: give this one back.
                store.increment(&key, -1, ttl(ttl_ms))?;
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
                if store.compare_and_swap(
                    &key,
                    Some(&current),
                    &new_tat.to_string(),
                    ttl(ttl_ms),
                )? {
                    return Ok(());
                }
            }
            Err(Failure::Contention)
        }
        Commit::Quota { key, ttl_ms } => {
            store.increment(&key, -1, ttl(ttl_ms))?;
            Ok(())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use portcullis_sdk::store::MemoryStore;

    use super::*;
    use crate::config::Config;

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
        evaluate(store, &keyed, store.now_ms(), on_error)
    }

    fn allowed(evaluation: Evaluation) -> Vec<Status> {
        assert!(evaluation.failures.is_empty(), "{:?}", evaluation.failures);
        match evaluation.outcome {
            Outcome::Allowed(statuses) => statuses,
            other => panic!("expected to be allowed, got {other:?}"),
        }
    }

    /// The one refusing limit's status and the retry time of a denial.
    fn denied(evaluation: Evaluation) -> (Status, u64) {
        let (statuses, violated, retry_at_ms) = refusal(evaluation);
        let [name] = &violated[..] else {
            panic!("one refusing limit expected: {violated:?}");
        };
        let violated = statuses
            .into_iter()
            .find(|s| &s.name == name)
            .expect("the refusing limit's status");
        (violated, retry_at_ms)
    }

    /// Every status, the refusing limits and the retry time of a denial.
    fn refusal(evaluation: Evaluation) -> (Vec<Status>, Vec<String>, u64) {
        match evaluation.outcome {
            Outcome::Denied {
                statuses,
                violated,
                retry_at_ms,
            } => (statuses, violated, retry_at_ms),
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    /// The store key of the single-part counter of `limit` for `value`.
    fn key_of(limit: &Limit, value: &str) -> String {
        counter_key(limit, &mut |_| Some(value.into()), MissingKey::Skip).expect("key")
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
        store.set_now(LATE + 200);
        allowed(run(&store, &limits, "alice", OnStoreError::Allow));
        denied(run(&store, &limits, "alice", OnStoreError::Allow));
    }

    #[test]
    fn every_entry_expires() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"limits":[{"rate":5,"per":"second"},{"quota":3,"per":"day"}]}"#);
        allowed(run(&store, &limits, "alice", OnStoreError::Allow));
        let keys = store.keys();
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
        store.set_now(midnight - 1);
        denied(run(&store, &limits, "alice", OnStoreError::Allow));
        store.set_now(midnight);
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
        let (start, _) = crate::algo::Window::Fixed(3600).window(LATE);
        let counter = window_key(&key_of(&limits[0], "a"), start);
        let theirs = counter.clone();
        store.interleave(move |other| other.increment(&theirs, 2, None).map(drop));
        let (violated, _) = denied(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(violated.name, "hourly");
        assert_eq!(store.get(&counter).as_deref(), Some("4"));
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
        store.set_now(LATE + 1000);
        let statuses = allowed(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(statuses[0].r, 0, "the third of three");
        // Refused by the quota: the rate is given its unit back.
        let (violated, _) = denied(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(violated.name, "daily");
        let tat: u64 = store
            .get(&key_of(&limits[1], "a"))
            .expect("tat")
            .parse()
            .expect("number");
        assert_eq!(
            tat,
            (LATE + 1000) * 1000 + 500_000,
            "one unit in use, not two"
        );
    }

    #[test]
    fn a_refusal_reports_every_limit_and_waits_for_the_latest() {
        let store = MemoryStore::at(LATE);
        // 23:59:58: the hourly and daily windows end in 2 s.
        let limits = limits(
            r#"{"limits":[
                {"quota":3,"per":"day"},
                {"rate":2,"per":"second"},
                {"rate":1,"per":"minute","by":["route"]}
            ]}"#,
        );
        allowed(run(&store, &limits, "a", OnStoreError::Allow));
        // The per-minute rate refuses; the others are read, not counted.
        let daily_key = window_key(
            &key_of(&limits[0], "a"),
            crate::algo::Window::Fixed(86_400).window(LATE).0,
        );
        let (statuses, violated, retry_at) =
            refusal(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(violated, ["per-minute"]);
        assert_eq!(retry_at, LATE + 60_000);
        let state = |name: &str, r, at| Status {
            name: name.into(),
            q: match name {
                "daily" => 3,
                "per-second" => 2,
                _ => 1,
            },
            r,
            reset_at_ms: Some(at),
        };
        assert_eq!(
            statuses,
            [
                state("daily", 2, LATE + 2000),
                state("per-second", 1, LATE + 500),
                state("per-minute", 0, LATE + 60_000),
            ],
            "configuration order, none counting the refused request"
        );
        assert_eq!(store.get(&daily_key).as_deref(), Some("1"), "not counted");
        // Once the per-second rate is used up too, both refuse and the
        // retry time is the later one.
        store.set_now(LATE + 1);
        let per_second_key = key_of(&limits[1], "a");
        let full = ((LATE + 1) * 1000 + 1_000_000).to_string();
        store.set(&per_second_key, &full, ttl(1000)).expect("set");
        let (statuses, violated, retry_at) =
            refusal(run(&store, &limits, "a", OnStoreError::Allow));
        assert_eq!(violated, ["per-second", "per-minute"]);
        assert_eq!(retry_at, LATE + 60_000, "the latest of 0.5 s and 60 s");
        assert_eq!(statuses[1].r, 0);
        assert_eq!(statuses[1].reset_at_ms, Some(LATE + 501));
        // When a quota refuses after a rate counted, the rate gives its
        // unit back and reports its state without it.
        let other = MemoryStore::at(LATE);
        let two = &[limits[0].clone(), limits[1].clone()];
        for _ in 0..2 {
            allowed(run(&other, two, "b", OnStoreError::Allow));
        }
        other.set_now(LATE + 1000);
        allowed(run(&other, two, "b", OnStoreError::Allow));
        let (statuses, violated, retry_at) = refusal(run(&other, two, "b", OnStoreError::Allow));
        assert_eq!(violated, ["daily"]);
        assert_eq!(retry_at, LATE + 2000);
        assert_eq!(
            statuses,
            [
                state("daily", 0, LATE + 2000),
                state("per-second", 1, LATE + 1500)
            ]
        );
        let tat: u64 = other
            .get(&key_of(&limits[1], "b"))
            .expect("tat")
            .parse()
            .expect("number");
        assert_eq!(
            tat,
            (LATE + 1500) * 1000,
            "one unit in use after the refund"
        );
    }

    #[test]
    fn a_lost_race_is_retried_and_endless_contention_is_a_failure() {
        let store = MemoryStore::at(LATE);
        let limits = limits(r#"{"limits":[{"rate":1,"per":"second"}]}"#);
        store.lose_races(CAS_ATTEMPTS - 1);
        allowed(run(&store, &limits, "a", OnStoreError::Allow));
        store.lose_races(CAS_ATTEMPTS);
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
        store.limit_entries(Some(1));
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
        store.limit_entries(Some(1));
        let evaluation = run(&store, &limits, "a", OnStoreError::Deny);
        assert_eq!(evaluation.outcome, Outcome::Failed);
        // The rate's unit was given back.
        let key = key_of(&limits[0], "a");
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
        let key = key_of(&rate[0], "a");
        store.set(&key, "garbage", ttl(60_000)).expect("room");
        allowed(run(&store, &rate, "a", OnStoreError::Allow));
        denied(run(&store, &rate, "a", OnStoreError::Allow));

        let quota = limits(r#"{"limits":[{"quota":1,"per":"hour"}]}"#);
        let (start, _) = crate::algo::Window::Fixed(3600).window(LATE);
        let key = window_key(&key_of(&quota[0], "a"), start);
        store.set(&key, "garbage", ttl(60_000)).expect("room");
        let evaluation = run(&store, &quota, "a", OnStoreError::Deny);
        assert_eq!(evaluation.outcome, Outcome::Failed);
        assert_eq!(
            evaluation.failures,
            [("hourly".to_owned(), Failure::Store(StoreError::NotANumber))]
        );
    }
}
