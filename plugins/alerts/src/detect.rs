//! The detectors: what one response counts for, when a condition is true,
//! and the alerts (notices) that fire and resolve incidents.

use crate::baseline::{self, SpikeState};
use crate::config::{By, CountRule, ErrorRateRule, Kind, Level, Settings, SpikeRule, Timing};
use crate::incident::{
    self, Entry, IncidentKeys, Subject, Transition, claim_sweep, index_add, index_entries,
    index_remove,
};
use crate::store::{Store, StoreError};

/// What the plugin saw of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation<'a> {
    /// The route's name.
    pub(crate) route: &'a str,
    /// The response status (the upstream's or a later plugin's reply).
    pub(crate) status: u16,
    /// The client's IP address.
    pub(crate) client_ip: &'a str,
    /// The consumer of the request's identity, if it has one.
    pub(crate) consumer: Option<&'a str>,
    /// The gateway clock, ms since the Unix epoch.
    pub(crate) now: u64,
}

/// The severity of a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// A resolution.
    Info,
    /// A firing alert of a `warning` detector.
    Warning,
    /// A firing alert of a `critical` detector.
    Critical,
}

/// An alert to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    /// How urgent.
    pub(crate) severity: Severity,
    /// The alert kind, e.g. `auth-failures`.
    pub(crate) kind: &'static str,
    /// For people.
    pub(crate) message: String,
    /// `client_ip`, `consumer`, `state`, `count`, `threshold`, `window_s`...
    pub(crate) labels: Vec<(String, String)>,
}

impl Notice {
    /// The value of the label `name`, if set.
    #[cfg(test)]
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What observing one response produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The alerts to raise, in order.
    pub(crate) notices: Vec<Notice>,
    /// The first store error met, if any (the detectors carry on without
    /// the failed step).
    pub(crate) error: Option<StoreError>,
}

impl Outcome {
    fn note(&mut self, result: Result<(), StoreError>) {
        if let Err(error) = result {
            self.error.get_or_insert(error);
        }
    }

    /// The value of `result`, if any and not an error (which is noted).
    fn keep<T>(&mut self, result: Option<Result<T, StoreError>>) -> Option<T> {
        match result? {
            Ok(value) => Some(value),
            Err(error) => {
                self.note(Err(error));
                None
            }
        }
    }
}

/// The numbers behind an alert, for its message and labels.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure<'a> {
    /// A counting detector.
    Count { count: u64, rule: &'a CountRule },
    /// The 5xx rate.
    Ratio {
        errors: u64,
        requests: u64,
        rule: &'a ErrorRateRule,
    },
    /// A traffic spike.
    Spike {
        state: SpikeState,
        rule: &'a SpikeRule,
    },
    /// The detector has been turned off.
    Off,
}

impl Measure<'_> {
    fn labels(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match *self {
            Measure::Count { count, rule } => vec![
                ("count", count.to_string()),
                ("threshold", rule.threshold.to_string()),
                ("window_s", rule.window.seconds().to_string()),
            ],
            Measure::Ratio {
                errors,
                requests,
                rule,
            } => vec![
                ("count", errors.to_string()),
                ("errors", errors.to_string()),
                ("requests", requests.to_string()),
                ("ratio", format!("{:.3}", ratio(errors, requests))),
                ("threshold", rule.ratio.to_string()),
                ("min_requests", rule.min_requests.to_string()),
                ("window_s", rule.window.seconds().to_string()),
            ],
            Measure::Spike { state, rule } => vec![
                ("count", state.count.to_string()),
                ("baseline", format!("{:.0}", state.baseline.ewma)),
                ("threshold", state.baseline.threshold(rule).to_string()),
                ("factor", rule.factor.to_string()),
                ("window_s", (rule.window_ms / 1000).to_string()),
            ],
            Measure::Off => Vec::new(),
        };
        pairs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    /// The numbers in a sentence.
    fn describe(&self) -> String {
        match *self {
            Measure::Count { count, rule } => format!(
                "{count} in {} s (threshold {})",
                rule.window.seconds(),
                rule.threshold
            ),
            Measure::Ratio {
                errors,
                requests,
                rule,
            } => format!(
                "{errors} of {requests} responses 5xx ({:.1}%) in {} s (threshold {:.1}% of at least {} responses)",
                ratio(errors, requests) * 100.0,
                rule.window.seconds(),
                rule.ratio * 100.0,
                rule.min_requests
            ),
            Measure::Spike { state, rule } => format!(
                "{} requests in the current {} s window against a baseline of {:.1} per window (threshold {}, {}x the baseline and at least {})",
                state.count,
                rule.window_ms / 1000,
                state.baseline.ewma,
                state.baseline.threshold(rule),
                rule.factor,
                rule.min_requests
            ),
            Measure::Off => "the detector is turned off".to_owned(),
        }
    }
}

fn ratio(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

/// The firing or resolving alert of a transition, if it has one.
fn notice(
    kind: Kind,
    route: &str,
    subject: &Subject,
    transition: Transition,
    measure: &Measure<'_>,
    level: Level,
    now: u64,
) -> Option<Notice> {
    let what = match kind {
        Kind::AuthFailures => format!("authentication failures from {}", subject.describe()),
        Kind::RateLimited => format!("rate-limited responses for {}", subject.describe()),
        Kind::ErrorRate => "5xx responses".to_owned(),
        Kind::TrafficSpike => "traffic spike".to_owned(),
    };
    let mut labels = subject.labels();
    let (severity, message) = match transition {
        Transition::Fired => {
            labels.push(("state".to_owned(), "firing".to_owned()));
            let severity = match level {
                Level::Warning => Severity::Warning,
                Level::Critical => Severity::Critical,
            };
            (
                severity,
                format!("{what} on route `{route}`: {}", measure.describe()),
            )
        }
        Transition::Resolved { fired_at } => {
            labels.push(("state".to_owned(), "resolved".to_owned()));
            let after = match fired_at {
                Some(fired_at) => {
                    let seconds = now.saturating_sub(fired_at) / 1000;
                    labels.push(("duration_s".to_owned(), seconds.to_string()));
                    format!(" after {seconds} s")
                }
                None => String::new(),
            };
            (
                Severity::Info,
                format!(
                    "{what} on route `{route}` cleared{after}: now {}",
                    measure.describe()
                ),
            )
        }
        Transition::Quiet | Transition::Suppressed | Transition::Ongoing | Transition::Gone => {
            return None;
        }
    };
    labels.extend(measure.labels());
    Some(Notice {
        severity,
        kind: kind.as_str(),
        message,
        labels,
    })
}

/// One detector's step for one subject: moves its incident on and collects
/// the alert and index changes.
struct Step<'a, S> {
    store: &'a S,
    route: &'a str,
    scope: &'a str,
    now: u64,
    notices: &'a mut Vec<Notice>,
}

impl<S: Store> Step<'_, S> {
    /// Tracks `kind`'s incident about `subject` given `over`; returns the
    /// transition after raising its notice and updating the index.
    fn track(
        &mut self,
        kind: Kind,
        subject: &Subject,
        over: bool,
        timing: &Timing,
        measure: &Measure<'_>,
        listed: bool,
    ) -> Result<Transition, StoreError> {
        let encoded = subject.encode();
        let keys = IncidentKeys::new(kind, self.scope, &encoded);
        let transition = incident::track(self.store, &keys, self.now, over, timing, listed)?;
        self.finish(kind, subject, transition, measure, timing.level)?;
        Ok(transition)
    }

    fn finish(
        &mut self,
        kind: Kind,
        subject: &Subject,
        transition: Transition,
        measure: &Measure<'_>,
        level: Level,
    ) -> Result<(), StoreError> {
        if let Some(notice) = notice(
            kind, self.route, subject, transition, measure, level, self.now,
        ) {
            self.notices.push(notice);
        }
        let encoded = subject.encode();
        match transition {
            Transition::Fired => {
                // A full index leaves the incident to its subject's events.
                index_add(self.store, self.scope, kind, &encoded)?;
            }
            Transition::Resolved { .. } => {
                let entry = (kind.as_str().to_owned(), encoded);
                index_remove(self.store, self.scope, &[entry])?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The subject a counting detector counts an observation for.
fn count_subject(by: By, obs: &Observation<'_>) -> Subject {
    match (by, obs.consumer) {
        (By::Route, _) => Subject::Route,
        (By::Consumer, Some(consumer)) => Subject::Consumer(consumer.to_owned()),
        (By::ClientIp, _) | (By::Consumer, None) => Subject::ClientIp(obs.client_ip.to_owned()),
    }
}

fn count_prefix(kind: Kind, scope: &str, subject: &Subject) -> String {
    format!("count:{}:{scope}:{}", kind.as_str(), subject.encode())
}

fn error_prefixes(scope: &str) -> (String, String) {
    (
        format!("responses:{scope}:all"),
        format!("responses:{scope}:5xx"),
    )
}

/// The 5xx rate's numbers at `now` and whether they are over the rule.
fn error_rate_over(rule: &ErrorRateRule, errors: u64, requests: u64) -> bool {
    requests >= rule.min_requests && errors as f64 >= rule.ratio * requests as f64
}

/// Observes one response: counts it for every detector that is on, fires
/// and resolves incidents, and, when `sweep` is true and no other request
/// swept the route within `sweep_interval_s`, resolves the route's
/// incidents that have cleared.
pub(crate) fn observe(
    settings: &Settings,
    store: &impl Store,
    obs: &Observation<'_>,
    sweep: bool,
) -> Outcome {
    let mut outcome = Outcome::default();
    let scope = incident::scope(obs.route);
    let mut notices = Vec::new();
    let mut step = Step {
        store,
        route: obs.route,
        scope: &scope,
        now: obs.now,
        notices: &mut notices,
    };

    for rule in settings.count_rules() {
        if rule.statuses.contains(&obs.status) {
            outcome.note(count_event(&mut step, rule, obs));
        }
    }
    if let Some(rule) = &settings.error_rate {
        outcome.note(error_rate_event(&mut step, rule, obs));
    }
    let spike = settings.traffic_spike.as_ref().map(|rule| {
        let state = baseline::record(store, rule, &scope, obs.now)?;
        let over = state.baseline.is_spike(rule, state.count);
        if over {
            let measure = Measure::Spike { state, rule };
            step.track(
                Kind::TrafficSpike,
                &Subject::Route,
                true,
                &rule.timing,
                &measure,
                false,
            )?;
        }
        Ok(state)
    });
    let spike = outcome.keep(spike);
    if sweep {
        sweep_if_claimed(&mut step, settings, spike, &mut outcome);
    }
    outcome.notices = notices;
    outcome
}

fn count_event<S: Store>(
    step: &mut Step<'_, S>,
    rule: &CountRule,
    obs: &Observation<'_>,
) -> Result<(), StoreError> {
    let subject = count_subject(rule.by, obs);
    let prefix = count_prefix(rule.kind, step.scope, &subject);
    let count = rule.window.add(step.store, &prefix, obs.now)?;
    let measure = Measure::Count { count, rule };
    let over = count >= rule.threshold;
    let transition = step.track(rule.kind, &subject, over, &rule.timing, &measure, false)?;
    // The consumer behind a client IP's failures, when the last one had an
    // identity, is context for the firing alert.
    if let (Transition::Fired, Subject::ClientIp(_), Some(consumer)) =
        (transition, &subject, obs.consumer)
        && let Some(notice) = step.notices.last_mut()
    {
        notice
            .labels
            .insert(1, ("consumer".to_owned(), consumer.to_owned()));
    }
    Ok(())
}

fn error_rate_event<S: Store>(
    step: &mut Step<'_, S>,
    rule: &ErrorRateRule,
    obs: &Observation<'_>,
) -> Result<(), StoreError> {
    let (all, errors_prefix) = error_prefixes(step.scope);
    if !(500..=599).contains(&obs.status) {
        rule.window.record(step.store, &all, obs.now)?;
        return Ok(());
    }
    let requests = rule.window.add(step.store, &all, obs.now)?;
    let errors = rule.window.add(step.store, &errors_prefix, obs.now)?;
    let measure = Measure::Ratio {
        errors,
        requests,
        rule,
    };
    let over = error_rate_over(rule, errors, requests);
    step.track(
        Kind::ErrorRate,
        &Subject::Route,
        over,
        &rule.timing,
        &measure,
        false,
    )?;
    Ok(())
}

/// Checks every incident in the route's index against its detector's
/// current numbers; resolves those that have cleared and drops the entries
/// of incidents that are gone.
/// A tick on `route` at `now`, without a request: sweeps the route's
/// incidents (if no instance did within the sweep interval), so that an
/// incident resolves once it clears even when the route has no traffic.
pub(crate) fn tick(settings: &Settings, store: &impl Store, route: &str, now: u64) -> Outcome {
    let mut outcome = Outcome::default();
    let scope = incident::scope(route);
    let mut notices = Vec::new();
    let mut step = Step {
        store,
        route,
        scope: &scope,
        now,
        notices: &mut notices,
    };
    let spike = outcome.keep(
        settings
            .traffic_spike
            .as_ref()
            .map(|rule| baseline::peek(store, rule, &scope, now)),
    );
    sweep_if_claimed(&mut step, settings, spike, &mut outcome);
    outcome.notices = notices;
    outcome
}

/// Sweeps the route's incidents if this call wins the claim on the sweep
/// interval (one sweep per interval across all instances).
fn sweep_if_claimed<S: Store>(
    step: &mut Step<'_, S>,
    settings: &Settings,
    spike: Option<SpikeState>,
    outcome: &mut Outcome,
) {
    match claim_sweep(step.store, step.scope, step.now, settings.sweep_interval_ms) {
        Ok(true) => outcome.note(sweep_route(step, settings, spike)),
        Ok(false) => {}
        Err(error) => outcome.note(Err(error)),
    }
}

fn sweep_route<S: Store>(
    step: &mut Step<'_, S>,
    settings: &Settings,
    spike: Option<SpikeState>,
) -> Result<(), StoreError> {
    let mut gone: Vec<Entry> = Vec::new();
    for entry in index_entries(step.store, step.scope) {
        let (Some(kind), Some(subject)) = (Kind::parse(&entry.0), Subject::decode(&entry.1)) else {
            gone.push(entry);
            continue;
        };
        let transition = match kind {
            Kind::AuthFailures | Kind::RateLimited => match settings.count_rule(kind) {
                Some(rule) => {
                    let prefix = count_prefix(kind, step.scope, &subject);
                    let count = rule.window.sum(step.store, &prefix, step.now);
                    let measure = Measure::Count { count, rule };
                    let over = count >= rule.threshold;
                    step.track(kind, &subject, over, &rule.timing, &measure, true)?
                }
                None => resolve_off(step, kind, &subject)?,
            },
            Kind::ErrorRate => match &settings.error_rate {
                Some(rule) => {
                    let (all, errors_prefix) = error_prefixes(step.scope);
                    let requests = rule.window.sum(step.store, &all, step.now);
                    let errors = rule.window.sum(step.store, &errors_prefix, step.now);
                    let measure = Measure::Ratio {
                        errors,
                        requests,
                        rule,
                    };
                    let over = error_rate_over(rule, errors, requests);
                    step.track(kind, &subject, over, &rule.timing, &measure, true)?
                }
                None => resolve_off(step, kind, &subject)?,
            },
            Kind::TrafficSpike => match (&settings.traffic_spike, spike) {
                (Some(rule), Some(state)) => {
                    let measure = Measure::Spike { state, rule };
                    let over = state.baseline.is_spike(rule, state.count);
                    step.track(kind, &subject, over, &rule.timing, &measure, true)?
                }
                // The spike state could not be read this time: next sweep.
                (Some(_), None) => Transition::Ongoing,
                (None, _) => resolve_off(step, kind, &subject)?,
            },
        };
        if matches!(transition, Transition::Resolved { .. } | Transition::Gone) {
            gone.push(entry);
        }
    }
    index_remove(step.store, step.scope, &gone)
}

/// Resolves an incident whose detector has been turned off since it fired.
fn resolve_off<S: Store>(
    step: &mut Step<'_, S>,
    kind: Kind,
    subject: &Subject,
) -> Result<Transition, StoreError> {
    let keys = IncidentKeys::new(kind, step.scope, &subject.encode());
    let transition = incident::force_resolve(step.store, &keys)?;
    if let Some(notice) = notice(
        kind,
        step.route,
        subject,
        transition,
        &Measure::Off,
        Level::Warning,
        step.now,
    ) {
        step.notices.push(notice);
    }
    Ok(transition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use portcullis_plugin_kit::testing;
    use portcullis_sdk::store::MemoryStore;

    const OFF: [&str; 4] = [
        r#""auth_failures":{"enabled":false}"#,
        r#""rate_limited":{"enabled":false}"#,
        r#""error_rate":{"enabled":false}"#,
        r#""traffic_spike":{"enabled":false}"#,
    ];

    /// Settings with only the detectors in `on` (`"name":{...}` pairs) on.
    fn settings(on: &[&str]) -> Settings {
        let mut parts: Vec<String> = on.iter().map(|s| (*s).to_owned()).collect();
        for off in OFF {
            let name = &off[..off.find(':').expect("name")];
            if !on.iter().any(|s| s.starts_with(name)) {
                parts.push(off.to_owned());
            }
        }
        let json = format!(r#"{{"sweep_interval_s":1,{}}}"#, parts.join(","));
        testing::valid(&json, Config::build)
    }

    /// A gateway: a store and the settings of one route.
    struct Gateway {
        store: MemoryStore,
        settings: Settings,
    }

    impl Gateway {
        fn new(on: &[&str]) -> Self {
            Gateway {
                store: MemoryStore::at(0),
                settings: settings(on),
            }
        }

        fn see(&self, now: u64, status: u16, ip: &str, consumer: Option<&str>) -> Vec<Notice> {
            self.store.set_now(now);
            let obs = Observation {
                route: "api",
                status,
                client_ip: ip,
                consumer,
                now,
            };
            let outcome = observe(&self.settings, &self.store, &obs, true);
            assert_eq!(outcome.error, None);
            outcome.notices
        }
    }

    /// An anonymous request from 10.0.0.1 on the route `api`.
    fn api_request(now: u64, status: u16) -> Observation<'static> {
        Observation {
            route: "api",
            status,
            client_ip: "10.0.0.1",
            consumer: None,
            now,
        }
    }

    const AUTH: &str = r#""auth_failures":{"threshold":20,"window_s":10,"cooldown_s":300}"#;

    #[test]
    fn twenty_auth_failures_from_one_ip_fire_one_alert_then_resolve() {
        let gw = Gateway::new(&[AUTH]);
        let mut fired = Vec::new();
        for i in 0..19 {
            assert!(
                gw.see(1_000_000 + i * 100, 401, "203.0.113.7", None)
                    .is_empty()
            );
        }
        fired.extend(gw.see(1_001_900, 403, "203.0.113.7", None));
        assert_eq!(fired.len(), 1, "{fired:?}");
        let alert = &fired[0];
        assert_eq!(alert.kind, "auth-failures");
        assert_eq!(alert.severity, Severity::Warning);
        assert_eq!(alert.label("client_ip"), Some("203.0.113.7"));
        assert_eq!(alert.label("consumer"), None);
        assert_eq!(alert.label("state"), Some("firing"));
        assert_eq!(alert.label("count"), Some("20"));
        assert_eq!(alert.label("threshold"), Some("20"));
        assert_eq!(alert.label("window_s"), Some("10"));
        assert!(
            alert
                .message
                .contains("from client 203.0.113.7 on route `api`"),
            "{}",
            alert.message
        );
        // More failures in the same incident, and another client's: nothing.
        for i in 0..30 {
            assert!(
                gw.see(1_002_000 + i * 100, 401, "203.0.113.7", None)
                    .is_empty()
            );
        }
        assert!(gw.see(1_005_000, 401, "198.51.100.1", None).is_empty());
        // Successes meanwhile do not resolve it: the window is still over.
        assert!(gw.see(1_006_000, 200, "203.0.113.7", None).is_empty());
        // The sweep of that success still saw 20 or more failures in the
        // window (at 1_006_000): a window later, with the count back under
        // the threshold, any request on the route resolves it, once.
        assert!(
            gw.see(1_015_000, 200, "192.0.2.1", None).is_empty(),
            "too early"
        );
        let resolved = gw.see(1_016_000, 200, "192.0.2.1", None);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        let alert = &resolved[0];
        assert_eq!(alert.kind, "auth-failures");
        assert_eq!(alert.severity, Severity::Info);
        assert_eq!(alert.label("state"), Some("resolved"));
        assert_eq!(alert.label("client_ip"), Some("203.0.113.7"));
        assert_eq!(alert.label("count"), Some("0"));
        assert_eq!(alert.label("duration_s"), Some("14"));
        assert!(gw.see(1_020_000, 200, "192.0.2.1", None).is_empty());
        assert!(gw.store.get("active:3.api").is_some_and(|i| i == "[]"));
    }

    #[test]
    fn a_tick_resolves_an_incident_on_a_route_gone_quiet() {
        let gw = Gateway::new(&[AUTH]);
        let fired: Vec<_> = (0..20)
            .flat_map(|i| gw.see(1_000_000 + i * 100, 401, "203.0.113.7", None))
            .collect();
        assert_eq!(fired.len(), 1, "{fired:?}");
        // No request at all from now on: only ticks.
        gw.store.set_now(1_005_000);
        let early = tick(&gw.settings, &gw.store, "api", 1_005_000);
        assert_eq!(early.error, None);
        assert!(early.notices.is_empty(), "still over: {:?}", early.notices);
        // That sweep saw the condition still true at 1_005_000: quiet for a
        // whole window (10 s) after it, the next tick resolves it.
        gw.store.set_now(1_014_000);
        let quiet = tick(&gw.settings, &gw.store, "api", 1_014_000);
        assert!(quiet.notices.is_empty(), "too early: {:?}", quiet.notices);
        gw.store.set_now(1_016_000);
        let resolved = tick(&gw.settings, &gw.store, "api", 1_016_000);
        assert_eq!(resolved.notices.len(), 1, "{:?}", resolved.notices);
        assert_eq!(resolved.notices[0].label("state"), Some("resolved"));
        assert_eq!(resolved.notices[0].label("client_ip"), Some("203.0.113.7"));
        gw.store.set_now(1_030_000);
        assert!(
            tick(&gw.settings, &gw.store, "api", 1_030_000)
                .notices
                .is_empty()
        );
        // Another route's tick never touches this route's incidents.
        assert!(
            tick(&gw.settings, &gw.store, "other", 1_030_000)
                .notices
                .is_empty()
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_fire() {
        let gw = Gateway::new(&[AUTH]);
        // 60 failures, one every 600 ms: at most 17 in any 10 s.
        for i in 0..60 {
            let notices = gw.see(1_000_000 + i * 600, 401, "203.0.113.7", None);
            assert!(notices.is_empty(), "failure {i}: {notices:?}");
        }
        // Twice as fast fires.
        let fired: Vec<_> = (0..20)
            .flat_map(|i| gw.see(2_000_000 + i * 300, 401, "203.0.113.7", None))
            .collect();
        assert_eq!(fired.len(), 1);
    }

    #[test]
    fn the_subjects_own_next_failure_resolves_it() {
        let gw = Gateway {
            store: MemoryStore::at(0),
            // A sweep only once an hour: resolution comes from the event.
            settings: Settings {
                sweep_interval_ms: 3_600_000,
                ..settings(&[AUTH])
            },
        };
        gw.store
            .set("sweep:3.api", "0", crate::store::ttl(3_600_000))
            .expect("set");
        let fired: Vec<_> = (0..20)
            .flat_map(|i| gw.see(1000 + i, 401, "203.0.113.7", None))
            .collect();
        assert_eq!(fired.len(), 1);
        let resolved = gw.see(30_000, 401, "203.0.113.7", None);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].label("state"), Some("resolved"));
        assert_eq!(resolved[0].label("count"), Some("1"));
    }

    #[test]
    fn by_consumer_counts_identified_requests_per_consumer_and_others_per_ip() {
        let gw =
            Gateway::new(&[r#""auth_failures":{"threshold":3,"window_s":10,"by":"consumer"}"#]);
        // alice's 403s from three addresses count together.
        assert!(gw.see(1000, 403, "10.0.0.1", Some("alice")).is_empty());
        assert!(gw.see(1001, 403, "10.0.0.2", Some("alice")).is_empty());
        // Unidentified 401s from 10.0.0.1 count for the address.
        assert!(gw.see(1002, 401, "10.0.0.1", None).is_empty());
        let fired = gw.see(1003, 403, "10.0.0.3", Some("alice"));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].label("consumer"), Some("alice"));
        assert_eq!(fired[0].label("client_ip"), None);
        assert!(fired[0].message.contains("consumer `alice`"));
        assert!(gw.see(1004, 401, "10.0.0.1", None).is_empty());
        let fired = gw.see(1005, 401, "10.0.0.1", None);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].label("client_ip"), Some("10.0.0.1"));
    }

    #[test]
    fn an_ip_alert_names_the_consumer_when_known() {
        let gw = Gateway::new(&[r#""auth_failures":{"threshold":2,"statuses":[403]}"#]);
        assert!(
            gw.see(1000, 401, "10.0.0.1", None).is_empty(),
            "401 not counted"
        );
        assert!(gw.see(1001, 403, "10.0.0.1", Some("bob")).is_empty());
        let fired = gw.see(1002, 403, "10.0.0.1", Some("bob"));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].label("client_ip"), Some("10.0.0.1"));
        assert_eq!(fired[0].label("consumer"), Some("bob"));
    }

    #[test]
    fn bursts_of_429_by_route_fire_once_with_the_configured_severity() {
        let gw = Gateway::new(&[
            r#""rate_limited":{"threshold":5,"window_s":10,"by":"route","severity":"critical"}"#,
        ]);
        let fired: Vec<_> = (0..10)
            .flat_map(|i| gw.see(1000 + i, 429, &format!("10.0.0.{i}"), None))
            .collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].kind, "rate-limited");
        assert_eq!(fired[0].severity, Severity::Critical);
        assert_eq!(fired[0].label("client_ip"), None);
        assert_eq!(fired[0].label("count"), Some("5"));
        assert!(fired[0].message.contains("all clients"));
    }

    #[test]
    fn the_cooldown_holds_back_a_relapse() {
        let gw = Gateway::new(&[r#""rate_limited":{"threshold":2,"window_s":10,"cooldown_s":60}"#]);
        let burst = |at: u64| -> Vec<Notice> {
            (0..2)
                .flat_map(|i| gw.see(at + i, 429, "10.0.0.1", None))
                .collect()
        };
        assert_eq!(burst(0).len(), 1);
        let resolved = gw.see(10_002, 200, "10.0.0.9", None);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert!(burst(20_000).is_empty(), "within 60 s of the first alert");
        assert!(
            gw.see(40_000, 200, "10.0.0.9", None).is_empty(),
            "nothing to resolve"
        );
        assert_eq!(burst(60_000).len(), 1, "after the cooldown");
    }

    #[test]
    fn the_error_rate_needs_the_ratio_and_enough_requests() {
        let gw = Gateway::new(&[
            r#""error_rate":{"ratio":0.5,"min_requests":10,"window_s":10,"cooldown_s":60}"#,
        ]);
        // 4 errors out of 4: 100% but too few requests.
        for i in 0..4 {
            assert!(gw.see(1000 + i, 503, "10.0.0.1", None).is_empty());
        }
        // 5 successes: 4 of 9.
        for i in 0..5 {
            assert!(gw.see(2000 + i, 200, "10.0.0.1", None).is_empty());
        }
        // The fifth error: 5 of 10 = 50%.
        let fired = gw.see(3000, 500, "10.0.0.1", None);
        assert_eq!(fired.len(), 1, "{fired:?}");
        let alert = &fired[0];
        assert_eq!(alert.kind, "error-rate");
        assert_eq!(alert.label("errors"), Some("5"));
        assert_eq!(alert.label("count"), Some("5"));
        assert_eq!(alert.label("requests"), Some("10"));
        assert_eq!(alert.label("ratio"), Some("0.500"));
        assert_eq!(alert.label("threshold"), Some("0.5"));
        assert_eq!(alert.label("state"), Some("firing"));
        assert!(
            alert.message.contains("5 of 10 responses 5xx (50.0%)"),
            "{}",
            alert.message
        );
        assert!(gw.see(3001, 500, "10.0.0.1", None).is_empty());
        // Successes dilute it, but it resolves only a window after the last
        // time it was seen over the ratio: by the sweep of the first success
        // at 4 s (6 of 12).
        for i in 0..20 {
            assert!(gw.see(4000 + i, 200, "10.0.0.1", None).is_empty());
        }
        assert!(gw.see(13_000, 200, "10.0.0.1", None).is_empty());
        let resolved = gw.see(14_000, 200, "10.0.0.1", None);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].label("state"), Some("resolved"));
        assert_eq!(resolved[0].severity, Severity::Info);
    }

    #[test]
    fn an_error_rate_still_over_does_not_resolve() {
        let gw = Gateway::new(&[r#""error_rate":{"ratio":0.5,"min_requests":2,"window_s":10}"#]);
        assert!(gw.see(1000, 500, "a", None).is_empty());
        assert_eq!(gw.see(1001, 500, "a", None).len(), 1);
        // No 5xx since, but the window still holds them at 10.9 s: the
        // sweep sees the rate over and keeps the incident.
        assert!(gw.see(10_900, 200, "a", None).is_empty());
        let resolved = gw.see(20_900, 200, "a", None);
        assert_eq!(resolved.len(), 1);
    }

    const SPIKE: &str = r#""traffic_spike":{"window_s":10,"factor":3,"min_requests":20,"alpha":0.5,"warmup_windows":2,"cooldown_s":60}"#;

    #[test]
    fn a_spike_against_the_baseline_fires_once_and_resolves() {
        let gw = Gateway::new(&[SPIKE]);
        // Windows 100 (partial, ignored), 101, 102: 10 requests each.
        for window in 100..103 {
            for i in 0..10 {
                assert!(gw.see(window * 10_000 + i * 100, 200, "a", None).is_empty());
            }
        }
        // Window 103: the baseline is 10 per window, so the 31st request
        // fires (above 3 x 10).
        let mut fired = Vec::new();
        for i in 0..60 {
            let notices = gw.see(1_030_000 + i * 10, 200, "a", None);
            if !notices.is_empty() {
                assert_eq!(i, 30, "fired at request {}", i + 1);
            }
            fired.extend(notices);
        }
        assert_eq!(fired.len(), 1);
        let alert = &fired[0];
        assert_eq!(alert.kind, "traffic-spike");
        assert_eq!(alert.label("count"), Some("31"));
        assert_eq!(alert.label("baseline"), Some("10"));
        assert_eq!(alert.label("threshold"), Some("31"));
        assert_eq!(alert.label("window_s"), Some("10"));
        // Back to 10 a window: window 104 folds 103 (60) into the baseline
        // (35), so it is not a spike; a window after the last spiking
        // request, the incident resolves.
        let mut resolved = Vec::new();
        for window in 104..106 {
            for i in 0..10 {
                resolved.extend(gw.see(window * 10_000 + i * 100, 200, "a", None));
            }
        }
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].kind, "traffic-spike");
        assert_eq!(resolved[0].label("state"), Some("resolved"));
    }

    #[test]
    fn no_spike_before_the_baseline_is_warm() {
        let gw = Gateway::new(&[SPIKE]);
        // One quiet window folded in, then a burst: not warm yet.
        for i in 0..5 {
            gw.see(1_000_000 + i, 200, "a", None);
        }
        for i in 0..5 {
            gw.see(1_010_000 + i, 200, "a", None);
        }
        for i in 0..100 {
            assert!(gw.see(1_020_000 + i, 200, "a", None).is_empty());
        }
    }

    #[test]
    fn an_incident_of_a_detector_turned_off_resolves_on_the_next_sweep() {
        let store = MemoryStore::at(0);
        let on = settings(&[r#""rate_limited":{"threshold":1}"#]);
        let obs = api_request;
        assert_eq!(observe(&on, &store, &obs(0, 429), true).notices.len(), 1);
        let off = settings(&[]);
        store.set_now(5000);
        let outcome = observe(&off, &store, &obs(5000, 200), true);
        assert_eq!(outcome.notices.len(), 1);
        assert_eq!(outcome.notices[0].label("state"), Some("resolved"));
        assert!(outcome.notices[0].message.contains("turned off"));
        store.set_now(10_000);
        assert!(
            observe(&off, &store, &obs(10_000, 200), true)
                .notices
                .is_empty()
        );
    }

    #[test]
    fn one_sweep_per_interval_across_instances() {
        let store = MemoryStore::at(0);
        let settings = settings(&[r#""rate_limited":{"threshold":1,"window_s":1}"#]);
        let obs = api_request;
        assert_eq!(
            observe(&settings, &store, &obs(0, 429), true).notices.len(),
            1
        );
        store.set_now(1500);
        // Two instances, both allowed by their local hint, at the same time.
        let first = observe(&settings, &store, &obs(1500, 200), true);
        let second = observe(&settings, &store, &obs(1500, 200), true);
        assert_eq!(first.notices.len() + second.notices.len(), 1);
        // Without the hint, no sweep at all.
        let store = MemoryStore::at(0);
        observe(&settings, &store, &obs(0, 429), true);
        store.set_now(5000);
        assert!(
            observe(&settings, &store, &obs(5000, 200), false)
                .notices
                .is_empty()
        );
    }

    #[test]
    fn store_failures_are_reported_and_nothing_fires() {
        let gw = Gateway::new(&[AUTH, SPIKE]);
        gw.store.fail_writes(Some(StoreError::Full));
        let obs = Observation {
            route: "api",
            status: 401,
            client_ip: "a",
            consumer: None,
            now: 0,
        };
        let outcome = observe(&gw.settings, &gw.store, &obs, true);
        assert_eq!(outcome.error, Some(StoreError::Full));
        assert!(outcome.notices.is_empty());
    }

    #[test]
    fn routes_are_counted_apart() {
        let store = MemoryStore::at(0);
        let settings = settings(&[r#""rate_limited":{"threshold":2}"#]);
        let obs = |route| Observation {
            route,
            status: 429,
            client_ip: "10.0.0.1",
            consumer: None,
            now: 0,
        };
        assert!(
            observe(&settings, &store, &obs("a"), true)
                .notices
                .is_empty()
        );
        assert!(
            observe(&settings, &store, &obs("b"), true)
                .notices
                .is_empty()
        );
        let fired = observe(&settings, &store, &obs("a"), true).notices;
        assert_eq!(fired.len(), 1);
        assert!(fired[0].message.contains("route `a`"));
    }
}
