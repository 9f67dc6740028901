//! Incidents: when a detector's condition fires an alert, when it resolves,
//! and the per-route index that lets any request find active incidents.
//!
//! Every incident of a detector (`kind`) about a subject (a client IP, a
//! consumer, or the route) on a route has two keys in the shared store:
//!
//! - `fired:<kind>:<scope>:<subject>`, created with compare-and-swap and a
//!   TTL of the cooldown when the alert fires: of all the gateway's
//!   instances that see the condition at once, only the one whose swap
//!   succeeds raises the alert, and none fires again for that subject
//!   before the cooldown has passed;
//! - `incident:<kind>:<scope>:<subject>`, `<fired_at>;<last_over>` (ms) while
//!   the incident is active: one incident sends one alert however long it
//!   lasts. It resolves once its condition has not been seen for a whole
//!   window (`now - last_over >= window`) and is not true now; the instance
//!   whose swap to `resolved` succeeds raises the resolution.
//!
//! `<scope>` is the route name prefixed with its length, so that no route
//! and subject pair can spell another's key.

use crate::config::{Kind, Timing};
use crate::store::{Store, StoreError, ttl};

/// How long an incident record lives after its last update. The index
/// outlives it, so an incident idle for longer still resolves.
const INCIDENT_TTL_MS: u64 = 24 * 3600 * 1000;
/// The value of a resolved incident record, until it expires.
const RESOLVED: &str = "resolved";
/// Most active incidents indexed per route; beyond, an incident resolves
/// only on its subject's own events.
pub(crate) const MAX_INDEXED: usize = 256;
/// Attempts at a compare-and-swap of the index before giving up.
const INDEX_ATTEMPTS: usize = 8;

/// The store-key form of a route name: `<len>.<name>`.
pub(crate) fn scope(route: &str) -> String {
    format!("{}.{route}", route.len())
}

/// Whom an incident is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    /// A client IP address.
    ClientIp(String),
    /// A consumer (from the request's identity).
    Consumer(String),
    /// The route as a whole.
    Route,
}

impl Subject {
    /// The key form: `ip:<address>`, `consumer:<name>` or `route`.
    pub(crate) fn encode(&self) -> String {
        match self {
            Subject::ClientIp(ip) => format!("ip:{ip}"),
            Subject::Consumer(name) => format!("consumer:{name}"),
            Subject::Route => "route".to_owned(),
        }
    }

    /// The subject whose key form is `text`.
    pub(crate) fn decode(text: &str) -> Option<Subject> {
        if let Some(ip) = text.strip_prefix("ip:") {
            Some(Subject::ClientIp(ip.to_owned()))
        } else if let Some(name) = text.strip_prefix("consumer:") {
            Some(Subject::Consumer(name.to_owned()))
        } else {
            (text == "route").then_some(Subject::Route)
        }
    }

    /// The alert labels naming the subject (`client_ip` or `consumer`).
    pub(crate) fn labels(&self) -> Vec<(String, String)> {
        match self {
            Subject::ClientIp(ip) => vec![("client_ip".to_owned(), ip.clone())],
            Subject::Consumer(name) => vec![("consumer".to_owned(), name.clone())],
            Subject::Route => Vec::new(),
        }
    }

    /// The subject in a sentence: `client 203.0.113.7`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Subject::ClientIp(ip) => format!("client {ip}"),
            Subject::Consumer(name) => format!("consumer `{name}`"),
            Subject::Route => "all clients".to_owned(),
        }
    }
}

/// The store keys of one incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncidentKeys {
    /// The incident record.
    incident: String,
    /// The cooldown marker.
    fired: String,
}

impl IncidentKeys {
    /// The keys of `kind`'s incident about `subject` (key form) on the route
    /// whose scope is `scope`.
    pub(crate) fn new(kind: Kind, scope: &str, subject: &str) -> Self {
        let kind = kind.as_str();
        IncidentKeys {
            incident: format!("incident:{kind}:{scope}:{subject}"),
            fired: format!("fired:{kind}:{scope}:{subject}"),
        }
    }
}

/// An active incident's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incident {
    /// When the alert fired (ms).
    fired_at: u64,
    /// When the condition was last seen true (ms).
    last_over: u64,
}

impl Incident {
    fn encode(self) -> String {
        format!("{};{}", self.fired_at, self.last_over)
    }

    fn decode(text: &str) -> Option<Incident> {
        let (fired_at, last_over) = text.split_once(';')?;
        Some(Incident {
            fired_at: fired_at.parse().ok()?,
            last_over: last_over.parse().ok()?,
        })
    }
}

/// What [`track`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// No incident and the condition is false.
    Quiet,
    /// The condition is true but an alert fired within the cooldown (or
    /// another instance fired it just now): nothing to send.
    Suppressed,
    /// A new incident: send the firing alert.
    Fired,
    /// The incident goes on (or has not been quiet for a window yet).
    Ongoing,
    /// The incident has cleared: send the resolution. `fired_at` is unknown
    /// when the record had expired.
    Resolved {
        /// When the alert fired (ms), if known.
        fired_at: Option<u64>,
    },
    /// The incident was resolved already (by another request).
    Gone,
}

/// Moves `keys`' incident on, given whether its condition is true (`over`)
/// at `now`. `listed`: the caller found the incident in the route's index,
/// so a missing record means an incident whose record expired, which is
/// resolved rather than ignored.
pub(crate) fn track(
    store: &impl Store,
    keys: &IncidentKeys,
    now: u64,
    over: bool,
    timing: &Timing,
    listed: bool,
) -> Result<Transition, StoreError> {
    let raw = store.get(&keys.incident);
    let incident = raw.as_deref().and_then(Incident::decode);
    match (incident, over) {
        (Some(incident), true) => {
            if now > incident.last_over {
                let updated = Incident {
                    last_over: now,
                    ..incident
                };
                // Lost to another instance: it updated or resolved the
                // record; either way this observation changes nothing.
                store.compare_and_swap(
                    &keys.incident,
                    raw.as_deref(),
                    &updated.encode(),
                    ttl(INCIDENT_TTL_MS),
                )?;
            }
            Ok(Transition::Ongoing)
        }
        (Some(incident), false) => {
            if now.saturating_sub(incident.last_over) < timing.quiet_ms {
                return Ok(Transition::Ongoing);
            }
            let resolved = store.compare_and_swap(
                &keys.incident,
                raw.as_deref(),
                RESOLVED,
                ttl(timing.quiet_ms),
            )?;
            Ok(if resolved {
                Transition::Resolved {
                    fired_at: Some(incident.fired_at),
                }
            } else {
                Transition::Ongoing
            })
        }
        (None, true) => {
            let now_text = now.to_string();
            if !store.compare_and_swap(&keys.fired, None, &now_text, ttl(timing.cooldown_ms))? {
                return Ok(Transition::Suppressed);
            }
            let incident = Incident {
                fired_at: now,
                last_over: now,
            };
            store.set(&keys.incident, &incident.encode(), ttl(INCIDENT_TTL_MS))?;
            Ok(Transition::Fired)
        }
        (None, false) if listed && raw.is_none() => {
            let resolved =
                store.compare_and_swap(&keys.incident, None, RESOLVED, ttl(timing.quiet_ms))?;
            Ok(if resolved {
                Transition::Resolved { fired_at: None }
            } else {
                Transition::Gone
            })
        }
        (None, false) if listed => Ok(Transition::Gone),
        (None, false) => Ok(Transition::Quiet),
    }
}

/// Resolves `keys`' incident now, whatever its condition: for an incident
/// whose detector has been turned off.
pub(crate) fn force_resolve(
    store: &impl Store,
    keys: &IncidentKeys,
) -> Result<Transition, StoreError> {
    let raw = store.get(&keys.incident);
    if raw.as_deref() == Some(RESOLVED) {
        return Ok(Transition::Gone);
    }
    let fired_at = raw
        .as_deref()
        .and_then(Incident::decode)
        .map(|i| i.fired_at);
    let resolved = store.compare_and_swap(&keys.incident, raw.as_deref(), RESOLVED, ttl(60_000))?;
    Ok(if resolved {
        Transition::Resolved { fired_at }
    } else {
        Transition::Gone
    })
}

/// One index entry: the kind and the subject's key form.
pub(crate) type Entry = (String, String);

fn index_key(scope: &str) -> String {
    format!("active:{scope}")
}

fn decode_index(raw: Option<&str>) -> Vec<Entry> {
    raw.and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// The route's active incidents.
pub(crate) fn index_entries(store: &impl Store, scope: &str) -> Vec<Entry> {
    decode_index(store.get(&index_key(scope)).as_deref())
}

/// Changes the route's index with `change` (which returns whether it
/// changed anything), retrying when another instance changed it meanwhile.
fn update_index(
    store: &impl Store,
    scope: &str,
    mut change: impl FnMut(&mut Vec<Entry>) -> bool,
) -> Result<bool, StoreError> {
    let key = index_key(scope);
    for _ in 0..INDEX_ATTEMPTS {
        let raw = store.get(&key);
        let mut entries = decode_index(raw.as_deref());
        if !change(&mut entries) {
            return Ok(false);
        }
        let text = serde_json::to_string(&entries).unwrap_or_else(|_| "[]".to_owned());
        if store.compare_and_swap(&key, raw.as_deref(), &text, None)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Lists an incident in the route's index. False if the index is full (or
/// too contended), in which case the incident resolves only on its
/// subject's own events.
pub(crate) fn index_add(
    store: &impl Store,
    scope: &str,
    kind: Kind,
    subject: &str,
) -> Result<bool, StoreError> {
    let entry = (kind.as_str().to_owned(), subject.to_owned());
    update_index(store, scope, |entries| {
        if entries.contains(&entry) || entries.len() >= MAX_INDEXED {
            return false;
        }
        entries.push(entry.clone());
        true
    })
}

/// Takes `gone` out of the route's index.
pub(crate) fn index_remove(
    store: &impl Store,
    scope: &str,
    gone: &[Entry],
) -> Result<(), StoreError> {
    if gone.is_empty() {
        return Ok(());
    }
    update_index(store, scope, |entries| {
        let before = entries.len();
        entries.retain(|entry| !gone.contains(entry));
        entries.len() != before
    })?;
    Ok(())
}

/// Whether this request should sweep the route's incidents: true for the
/// first request of each `interval_ms`, across every instance.
pub(crate) fn claim_sweep(
    store: &impl Store,
    scope: &str,
    now: u64,
    interval_ms: u64,
) -> Result<bool, StoreError> {
    store.compare_and_swap(
        &format!("sweep:{scope}"),
        None,
        &now.to_string(),
        ttl(interval_ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Level;
    use portcullis_sdk::store::MemoryStore;

    const TIMING: Timing = Timing {
        quiet_ms: 10_000,
        cooldown_ms: 60_000,
        level: Level::Warning,
    };

    fn keys() -> IncidentKeys {
        IncidentKeys::new(Kind::AuthFailures, &scope("api"), "ip:203.0.113.7")
    }

    fn step(store: &MemoryStore, now: u64, over: bool) -> Transition {
        store.set_now(now);
        track(store, &keys(), now, over, &TIMING, false).expect("store works")
    }

    #[test]
    fn one_incident_fires_once_and_resolves_after_a_quiet_window() {
        let store = MemoryStore::at(0);
        assert_eq!(step(&store, 1000, false), Transition::Quiet);
        assert_eq!(step(&store, 2000, true), Transition::Fired);
        assert_eq!(step(&store, 3000, true), Transition::Ongoing);
        assert_eq!(step(&store, 5000, false), Transition::Ongoing);
        // Over again at 6 s: the quiet period restarts from there.
        assert_eq!(step(&store, 6000, true), Transition::Ongoing);
        assert_eq!(step(&store, 15_999, false), Transition::Ongoing);
        assert_eq!(
            step(&store, 16_000, false),
            Transition::Resolved {
                fired_at: Some(2000)
            }
        );
        assert_eq!(step(&store, 17_000, false), Transition::Quiet);
    }

    #[test]
    fn an_incident_longer_than_the_cooldown_still_sends_one_alert() {
        let store = MemoryStore::at(0);
        assert_eq!(step(&store, 0, true), Transition::Fired);
        for second in 1..200 {
            assert_eq!(step(&store, second * 1000, true), Transition::Ongoing);
        }
    }

    #[test]
    fn the_cooldown_suppresses_a_new_incident_after_a_resolution() {
        let store = MemoryStore::at(0);
        assert_eq!(step(&store, 0, true), Transition::Fired);
        assert!(matches!(
            step(&store, 10_000, false),
            Transition::Resolved { .. }
        ));
        // Within the 60 s cooldown of the first alert: no new alert, and so
        // no resolution either.
        assert_eq!(step(&store, 20_000, true), Transition::Suppressed);
        assert_eq!(step(&store, 40_000, false), Transition::Quiet);
        // After it, a new incident fires.
        assert_eq!(step(&store, 60_000, true), Transition::Fired);
    }

    /// Two instances that both read "no incident" before either writes:
    /// the other one fires between this one's read and its write, so this
    /// one's compare-and-swap loses and it sends nothing.
    #[test]
    fn an_instance_that_loses_the_race_to_fire_stays_quiet() {
        let store = MemoryStore::at(0);
        let fired_by_other = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = fired_by_other.clone();
        store.interleave(move |other| {
            seen.set(Some(track(other, &keys(), 0, true, &TIMING, false)?));
            Ok(())
        });
        assert_eq!(
            track(&store, &keys(), 0, true, &TIMING, false),
            Ok(Transition::Suppressed)
        );
        assert_eq!(fired_by_other.get(), Some(Transition::Fired));
        // And resolving: the other resolves between this one's read and its
        // write; this one's resolution is lost, so one resolution is sent.
        store.set_now(10_000);
        let resolved_by_other = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = resolved_by_other.clone();
        store.interleave(move |other| {
            seen.set(Some(track(other, &keys(), 10_000, false, &TIMING, false)?));
            Ok(())
        });
        assert_eq!(
            track(&store, &keys(), 10_000, false, &TIMING, false),
            Ok(Transition::Ongoing)
        );
        assert_eq!(
            resolved_by_other.get(),
            Some(Transition::Resolved { fired_at: Some(0) })
        );
        // A lost compare-and-swap with no visible writer reads the same.
        let store = MemoryStore::at(0);
        store.lose_races(1);
        assert_eq!(
            track(&store, &keys(), 0, true, &TIMING, false),
            Ok(Transition::Suppressed)
        );
    }

    #[test]
    fn two_instances_seeing_the_same_condition_fire_once() {
        let store = MemoryStore::at(0);
        let first = track(&store, &keys(), 0, true, &TIMING, false);
        let second = track(&store, &keys(), 0, true, &TIMING, false);
        assert_eq!(first, Ok(Transition::Fired));
        assert_eq!(second, Ok(Transition::Ongoing));
        store.set_now(10_000);
        let first = track(&store, &keys(), 10_000, false, &TIMING, false);
        let second = track(&store, &keys(), 10_000, false, &TIMING, true);
        assert!(matches!(first, Ok(Transition::Resolved { .. })));
        assert_eq!(second, Ok(Transition::Gone));
    }

    #[test]
    fn a_listed_incident_whose_record_expired_still_resolves_once() {
        let store = MemoryStore::at(0);
        assert_eq!(step(&store, 0, true), Transition::Fired);
        let later = INCIDENT_TTL_MS + 1;
        store.set_now(later);
        assert_eq!(
            track(&store, &keys(), later, false, &TIMING, true),
            Ok(Transition::Resolved { fired_at: None })
        );
        assert_eq!(
            track(&store, &keys(), later, false, &TIMING, true),
            Ok(Transition::Gone)
        );
    }

    #[test]
    fn store_errors_are_reported() {
        let store = MemoryStore::at(0);
        store.fail_writes(Some(StoreError::Full));
        assert_eq!(
            track(&store, &keys(), 0, true, &TIMING, false),
            Err(StoreError::Full)
        );
    }

    #[test]
    fn force_resolve_closes_an_active_incident_once() {
        let store = MemoryStore::at(0);
        assert_eq!(step(&store, 0, true), Transition::Fired);
        assert_eq!(
            force_resolve(&store, &keys()),
            Ok(Transition::Resolved { fired_at: Some(0) })
        );
        assert_eq!(force_resolve(&store, &keys()), Ok(Transition::Gone));
    }

    #[test]
    fn the_index_lists_incidents_once_and_drops_them() {
        let store = MemoryStore::at(0);
        let scope = scope("api");
        assert_eq!(
            index_add(&store, &scope, Kind::AuthFailures, "ip:a"),
            Ok(true)
        );
        assert_eq!(
            index_add(&store, &scope, Kind::AuthFailures, "ip:a"),
            Ok(false)
        );
        assert_eq!(
            index_add(&store, &scope, Kind::ErrorRate, "route"),
            Ok(true)
        );
        assert_eq!(
            index_entries(&store, &scope),
            [
                ("auth-failures".to_owned(), "ip:a".to_owned()),
                ("error-rate".to_owned(), "route".to_owned())
            ]
        );
        assert!(index_entries(&store, "3.web").is_empty(), "per route");
        index_remove(
            &store,
            &scope,
            &[("auth-failures".to_owned(), "ip:a".to_owned())],
        )
        .expect("removed");
        assert_eq!(
            index_entries(&store, &scope),
            [("error-rate".to_owned(), "route".to_owned())]
        );
    }

    #[test]
    fn the_index_is_bounded() {
        let store = MemoryStore::at(0);
        for i in 0..MAX_INDEXED {
            assert_eq!(
                index_add(&store, "s", Kind::AuthFailures, &format!("ip:{i}")),
                Ok(true)
            );
        }
        assert_eq!(
            index_add(&store, "s", Kind::AuthFailures, "ip:x"),
            Ok(false)
        );
        assert_eq!(index_entries(&store, "s").len(), MAX_INDEXED);
    }

    #[test]
    fn one_sweep_per_interval() {
        let store = MemoryStore::at(0);
        assert_eq!(claim_sweep(&store, "s", 0, 5000), Ok(true));
        assert_eq!(claim_sweep(&store, "s", 10, 5000), Ok(false));
        store.set_now(5000);
        assert_eq!(claim_sweep(&store, "s", 5000, 5000), Ok(true));
    }

    #[test]
    fn subjects_round_trip() {
        for subject in [
            Subject::ClientIp("::1".into()),
            Subject::Consumer("a:b".into()),
            Subject::Route,
        ] {
            assert_eq!(Subject::decode(&subject.encode()), Some(subject));
        }
        assert_eq!(Subject::decode("other"), None);
        assert_eq!(scope("api"), "3.api");
    }
}
