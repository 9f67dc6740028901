//! The plugin's configuration and its validation.

use serde::Deserialize;

use crate::window::Window;

/// Longest window or cooldown accepted, in seconds (one week).
const MAX_SECONDS: u64 = 7 * 24 * 3600;
/// Most slots a window may be split into.
const MAX_SLOTS: u32 = 60;

/// The configuration of one route's `alerts` plugin. Every detector is on
/// with its defaults unless its table says `enabled = false`.
///
/// ```toml
/// [routes.plugins.config]
/// slots = 10
/// sweep_interval_s = 5
/// [routes.plugins.config.auth_failures]
/// threshold = 20
/// window_s = 10
/// by = "client_ip"
/// cooldown_s = 300
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// How many slots each sliding window is split into (1 to 60).
    #[serde(default)]
    slots: Option<u32>,
    /// At most how often the route's active incidents are checked for
    /// resolution (by a request or by the gateway's tick), in seconds.
    #[serde(default)]
    sweep_interval_s: Option<u64>,
    /// Repeated authentication failures.
    #[serde(default)]
    auth_failures: CountConfig,
    /// Bursts of rate-limited responses.
    #[serde(default)]
    rate_limited: CountConfig,
    /// The rate of 5xx responses on the route.
    #[serde(default)]
    error_rate: ErrorRateConfig,
    /// Request-rate spikes on the route against its recent baseline.
    #[serde(default)]
    traffic_spike: SpikeConfig,
}

/// A detector that counts responses with given statuses per subject:
/// `auth_failures` and `rate_limited`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountConfig {
    /// `false` turns the detector off.
    #[serde(default)]
    enabled: Option<bool>,
    /// Responses in the window that fire the alert.
    #[serde(default)]
    threshold: Option<u64>,
    /// The sliding window, in seconds.
    #[serde(default)]
    window_s: Option<u64>,
    /// Whom the responses are counted for.
    #[serde(default)]
    by: Option<By>,
    /// After an alert, no new alert for the same subject for this long.
    #[serde(default)]
    cooldown_s: Option<u64>,
    /// The statuses that count.
    #[serde(default)]
    statuses: Option<Vec<u16>>,
    /// The severity of the firing alert.
    #[serde(default)]
    severity: Option<Level>,
}

/// The 5xx-rate detector.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorRateConfig {
    /// `false` turns the detector off.
    #[serde(default)]
    enabled: Option<bool>,
    /// The share of 5xx responses (0 < ratio <= 1) that fires the alert.
    #[serde(default)]
    ratio: Option<f64>,
    /// Fewer responses than this in the window never fire.
    #[serde(default)]
    min_requests: Option<u64>,
    /// The sliding window, in seconds.
    #[serde(default)]
    window_s: Option<u64>,
    /// After an alert, no new alert for the route for this long.
    #[serde(default)]
    cooldown_s: Option<u64>,
    /// The severity of the firing alert.
    #[serde(default)]
    severity: Option<Level>,
}

/// The traffic-spike detector.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpikeConfig {
    /// `false` turns the detector off.
    #[serde(default)]
    enabled: Option<bool>,
    /// The length of one (fixed) window, in seconds.
    #[serde(default)]
    window_s: Option<u64>,
    /// Fires when the current window's count exceeds `factor` times the
    /// baseline (greater than 1).
    #[serde(default)]
    factor: Option<f64>,
    /// Fewer requests than this in the current window never fire.
    #[serde(default)]
    min_requests: Option<u64>,
    /// Weight of the newest window in the baseline's moving average
    /// (0 < alpha <= 1).
    #[serde(default)]
    alpha: Option<f64>,
    /// Complete windows the baseline must have seen before it can fire.
    #[serde(default)]
    warmup_windows: Option<u64>,
    /// After an alert, no new alert for the route for this long.
    #[serde(default)]
    cooldown_s: Option<u64>,
    /// The severity of the firing alert.
    #[serde(default)]
    severity: Option<Level>,
}

/// Whom a counting detector counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum By {
    /// The client's IP address.
    ClientIp,
    /// The consumer of the request's identity; requests without one (such
    /// as key-auth's 401s) are counted by client IP.
    Consumer,
    /// Every response of the route together.
    Route,
}

/// The severity of a firing alert (resolutions are always `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Level {
    /// Needs attention.
    Warning,
    /// Needs attention now.
    Critical,
}

/// What an incident is about: the alert's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Repeated 401/403 responses.
    AuthFailures,
    /// Bursts of 429 responses.
    RateLimited,
    /// A high share of 5xx responses.
    ErrorRate,
    /// A request rate far above the baseline.
    TrafficSpike,
}

impl Kind {
    /// Every kind.
    pub(crate) const ALL: [Kind; 4] = [
        Kind::AuthFailures,
        Kind::RateLimited,
        Kind::ErrorRate,
        Kind::TrafficSpike,
    ];

    /// The alert kind, e.g. `auth-failures`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::AuthFailures => "auth-failures",
            Kind::RateLimited => "rate-limited",
            Kind::ErrorRate => "error-rate",
            Kind::TrafficSpike => "traffic-spike",
        }
    }

    /// The kind named `name`, if any.
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// How long an incident must stay quiet before it resolves, how long after
/// an alert no new one fires, and the severity of the alert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timing {
    /// An incident resolves once it has not been over its threshold for
    /// this long, in milliseconds (the detector's window).
    pub(crate) quiet_ms: u64,
    /// No new alert for the same subject for this long after one fired.
    pub(crate) cooldown_ms: u64,
    /// The severity of the firing alert.
    pub(crate) level: Level,
}

/// A validated counting detector (`auth_failures`, `rate_limited`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CountRule {
    /// `auth-failures` or `rate-limited`.
    pub(crate) kind: Kind,
    /// The count (events in the window) that fires.
    pub(crate) threshold: u64,
    /// The sliding window.
    pub(crate) window: Window,
    /// Whom events are counted for.
    pub(crate) by: By,
    /// The statuses that are events.
    pub(crate) statuses: Vec<u16>,
    /// Cooldown, quiet period and severity.
    pub(crate) timing: Timing,
}

/// A validated 5xx-rate detector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ErrorRateRule {
    /// The share of 5xx responses that fires.
    pub(crate) ratio: f64,
    /// The fewest responses in the window that may fire.
    pub(crate) min_requests: u64,
    /// The sliding window.
    pub(crate) window: Window,
    /// Cooldown, quiet period and severity.
    pub(crate) timing: Timing,
}

/// A validated traffic-spike detector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpikeRule {
    /// The length of one fixed window, in milliseconds.
    pub(crate) window_ms: u64,
    /// How many times the baseline the current window must exceed.
    pub(crate) factor: f64,
    /// The fewest requests in the current window that may fire.
    pub(crate) min_requests: u64,
    /// The weight of the newest window in the baseline.
    pub(crate) alpha: f64,
    /// Complete windows the baseline needs before the detector may fire.
    pub(crate) warmup_windows: u64,
    /// Cooldown, quiet period and severity.
    pub(crate) timing: Timing,
}

/// A validated configuration: the detectors that are on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// At most how often a request checks the route's active incidents.
    pub(crate) sweep_interval_ms: u64,
    /// Repeated 401/403, if on.
    pub(crate) auth_failures: Option<CountRule>,
    /// Bursts of 429, if on.
    pub(crate) rate_limited: Option<CountRule>,
    /// The 5xx rate, if on.
    pub(crate) error_rate: Option<ErrorRateRule>,
    /// Traffic spikes, if on.
    pub(crate) traffic_spike: Option<SpikeRule>,
}

impl Settings {
    /// The counting detectors that are on.
    pub(crate) fn count_rules(&self) -> impl Iterator<Item = &CountRule> {
        self.auth_failures.iter().chain(self.rate_limited.iter())
    }

    /// The counting detector of `kind`, if it is on.
    pub(crate) fn count_rule(&self, kind: Kind) -> Option<&CountRule> {
        self.count_rules().find(|rule| rule.kind == kind)
    }
}

/// Collects validation problems, each prefixed with its key path.
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, key: &str, what: &str) {
        self.0.push(format!("{key}: {what}"));
    }

    /// `value` (or `default`) if it is within `min..=max`, else a problem.
    fn range(&mut self, key: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
        let value = value.unwrap_or(default);
        if value < min || value > max {
            self.push(
                key,
                &format!("must be between {min} and {max}, got {value}"),
            );
            return default;
        }
        value
    }

    /// A float that must be finite and within `(min, max]` (`min` excluded).
    fn open_closed(
        &mut self,
        key: &str,
        value: Option<f64>,
        default: f64,
        min: f64,
        max: f64,
    ) -> f64 {
        let value = value.unwrap_or(default);
        if !value.is_finite() || value <= min || value > max {
            self.push(
                key,
                &format!("must be greater than {min} and at most {max}, got {value}"),
            );
            return default;
        }
        value
    }
}

/// Defaults of a counting detector.
struct CountDefaults {
    kind: Kind,
    name: &'static str,
    threshold: u64,
    window_s: u64,
    statuses: &'static [u16],
}

impl Config {
    /// Validates the configuration. Reports every problem at once, each
    /// naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Settings, String> {
        let mut problems = Problems(Vec::new());
        let slots = self.slots.unwrap_or(10);
        let slots = if (1..=MAX_SLOTS).contains(&slots) {
            slots
        } else {
            problems.push(
                "slots",
                &format!("must be between 1 and {MAX_SLOTS}, got {slots}"),
            );
            10
        };
        let sweep_interval_s =
            problems.range("sweep_interval_s", self.sweep_interval_s, 5, 1, MAX_SECONDS);
        let auth_failures = count_rule(
            &mut problems,
            self.auth_failures,
            slots,
            &CountDefaults {
                kind: Kind::AuthFailures,
                name: "auth_failures",
                threshold: 20,
                window_s: 60,
                statuses: &[401, 403],
            },
        );
        let rate_limited = count_rule(
            &mut problems,
            self.rate_limited,
            slots,
            &CountDefaults {
                kind: Kind::RateLimited,
                name: "rate_limited",
                threshold: 50,
                window_s: 60,
                statuses: &[429],
            },
        );
        let error_rate = error_rate_rule(&mut problems, self.error_rate, slots);
        let traffic_spike = spike_rule(&mut problems, self.traffic_spike);
        if !problems.0.is_empty() {
            return Err(problems.0.join("; "));
        }
        Ok(Settings {
            sweep_interval_ms: sweep_interval_s * 1000,
            auth_failures,
            rate_limited,
            error_rate,
            traffic_spike,
        })
    }
}

/// The cooldown, quiet period and severity of a detector named `name`.
fn timing(
    problems: &mut Problems,
    name: &str,
    window_ms: u64,
    cooldown_s: Option<u64>,
    level: Option<Level>,
) -> Timing {
    let cooldown_s = problems.range(
        &format!("{name}.cooldown_s"),
        cooldown_s,
        300,
        1,
        MAX_SECONDS,
    );
    Timing {
        quiet_ms: window_ms,
        cooldown_ms: cooldown_s * 1000,
        level: level.unwrap_or(Level::Warning),
    }
}

fn count_rule(
    problems: &mut Problems,
    config: CountConfig,
    slots: u32,
    defaults: &CountDefaults,
) -> Option<CountRule> {
    let name = defaults.name;
    let threshold = problems.range(
        &format!("{name}.threshold"),
        config.threshold,
        defaults.threshold,
        1,
        u64::from(u32::MAX),
    );
    let window_s = problems.range(
        &format!("{name}.window_s"),
        config.window_s,
        defaults.window_s,
        1,
        MAX_SECONDS,
    );
    let statuses = config
        .statuses
        .unwrap_or_else(|| defaults.statuses.to_vec());
    if statuses.is_empty() {
        problems.push(&format!("{name}.statuses"), "must list at least one status");
    }
    for (i, status) in statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            problems.push(
                &format!("{name}.statuses[{i}]"),
                &format!("must be an HTTP status between 100 and 599, got {status}"),
            );
        }
    }
    let window = Window::new(window_s * 1000, slots);
    let timing = timing(
        problems,
        name,
        window.window_ms,
        config.cooldown_s,
        config.severity,
    );
    config.enabled.unwrap_or(true).then(|| CountRule {
        kind: defaults.kind,
        threshold,
        window,
        by: config.by.unwrap_or(By::ClientIp),
        statuses,
        timing,
    })
}

fn error_rate_rule(
    problems: &mut Problems,
    config: ErrorRateConfig,
    slots: u32,
) -> Option<ErrorRateRule> {
    let ratio = problems.open_closed("error_rate.ratio", config.ratio, 0.5, 0.0, 1.0);
    let min_requests = problems.range(
        "error_rate.min_requests",
        config.min_requests,
        20,
        1,
        u64::from(u32::MAX),
    );
    let window_s = problems.range("error_rate.window_s", config.window_s, 60, 1, MAX_SECONDS);
    let window = Window::new(window_s * 1000, slots);
    let timing = timing(
        problems,
        "error_rate",
        window.window_ms,
        config.cooldown_s,
        config.severity,
    );
    config.enabled.unwrap_or(true).then_some(ErrorRateRule {
        ratio,
        min_requests,
        window,
        timing,
    })
}

fn spike_rule(problems: &mut Problems, config: SpikeConfig) -> Option<SpikeRule> {
    let window_s = problems.range(
        "traffic_spike.window_s",
        config.window_s,
        60,
        1,
        MAX_SECONDS,
    );
    let factor = problems.open_closed("traffic_spike.factor", config.factor, 3.0, 1.0, 1e6);
    let min_requests = problems.range(
        "traffic_spike.min_requests",
        config.min_requests,
        100,
        1,
        u64::from(u32::MAX),
    );
    let alpha = problems.open_closed("traffic_spike.alpha", config.alpha, 0.3, 0.0, 1.0);
    let warmup_windows = problems.range(
        "traffic_spike.warmup_windows",
        config.warmup_windows,
        3,
        1,
        1000,
    );
    let window_ms = window_s * 1000;
    let timing = timing(
        problems,
        "traffic_spike",
        window_ms,
        config.cooldown_s,
        config.severity,
    );
    config.enabled.unwrap_or(true).then_some(SpikeRule {
        window_ms,
        factor,
        min_requests,
        alpha,
        warmup_windows,
        timing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    portcullis_plugin_kit::config_test_helpers!(Config => Settings);

    #[test]
    fn an_empty_config_turns_every_detector_on_with_defaults() {
        let settings = build("{}").expect("valid");
        assert_eq!(settings.sweep_interval_ms, 5000);
        let auth = settings.auth_failures.expect("on");
        assert_eq!(auth.kind, Kind::AuthFailures);
        assert_eq!(auth.threshold, 20);
        assert_eq!(auth.window, Window::new(60_000, 10));
        assert_eq!(auth.by, By::ClientIp);
        assert_eq!(auth.statuses, [401, 403]);
        assert_eq!(
            auth.timing,
            Timing {
                quiet_ms: 60_000,
                cooldown_ms: 300_000,
                level: Level::Warning
            }
        );
        let limited = settings.rate_limited.expect("on");
        assert_eq!(limited.statuses, [429]);
        assert_eq!(limited.threshold, 50);
        let errors = settings.error_rate.expect("on");
        assert_eq!(errors.ratio, 0.5);
        assert_eq!(errors.min_requests, 20);
        let spike = settings.traffic_spike.expect("on");
        assert_eq!(spike.factor, 3.0);
        assert_eq!(spike.min_requests, 100);
        assert_eq!(spike.alpha, 0.3);
        assert_eq!(spike.warmup_windows, 3);
        assert_eq!(spike.window_ms, 60_000);
    }

    #[test]
    fn every_field_is_read() {
        let settings = build(
            r#"{"slots":5,"sweep_interval_s":2,
                "auth_failures":{"threshold":3,"window_s":10,"by":"consumer","cooldown_s":30,"statuses":[401],"severity":"critical"},
                "rate_limited":{"enabled":false},
                "error_rate":{"ratio":0.25,"min_requests":4,"window_s":20,"cooldown_s":40,"severity":"critical"},
                "traffic_spike":{"window_s":30,"factor":2,"min_requests":7,"alpha":0.5,"warmup_windows":1,"cooldown_s":50}}"#,
        )
        .expect("valid");
        assert_eq!(settings.sweep_interval_ms, 2000);
        assert_eq!(
            settings.auth_failures,
            Some(CountRule {
                kind: Kind::AuthFailures,
                threshold: 3,
                window: Window::new(10_000, 5),
                by: By::Consumer,
                statuses: vec![401],
                timing: Timing {
                    quiet_ms: 10_000,
                    cooldown_ms: 30_000,
                    level: Level::Critical
                },
            })
        );
        assert_eq!(settings.rate_limited, None);
        assert_eq!(
            settings.error_rate,
            Some(ErrorRateRule {
                ratio: 0.25,
                min_requests: 4,
                window: Window::new(20_000, 5),
                timing: Timing {
                    quiet_ms: 20_000,
                    cooldown_ms: 40_000,
                    level: Level::Critical
                },
            })
        );
        assert_eq!(
            settings.traffic_spike,
            Some(SpikeRule {
                window_ms: 30_000,
                factor: 2.0,
                min_requests: 7,
                alpha: 0.5,
                warmup_windows: 1,
                timing: Timing {
                    quiet_ms: 30_000,
                    cooldown_ms: 50_000,
                    level: Level::Warning
                },
            })
        );
        assert_eq!(
            settings.count_rule(Kind::AuthFailures).map(|r| r.threshold),
            Some(3)
        );
        assert_eq!(settings.count_rule(Kind::RateLimited), None);
    }

    #[test]
    fn bad_values_are_reported_together_with_their_keys() {
        let message = problems(
            r#"{"slots":0,"sweep_interval_s":0,
                "auth_failures":{"threshold":0,"window_s":0,"cooldown_s":0,"statuses":[]},
                "rate_limited":{"statuses":[429,99]},
                "error_rate":{"ratio":1.5,"min_requests":0},
                "traffic_spike":{"factor":1,"alpha":0,"warmup_windows":0}}"#,
        );
        for expected in [
            "slots: must be between 1 and 60, got 0",
            "sweep_interval_s: must be between 1 and 604800, got 0",
            "auth_failures.threshold: must be between 1 and 4294967295, got 0",
            "auth_failures.window_s: must be between 1 and 604800, got 0",
            "auth_failures.statuses: must list at least one status",
            "auth_failures.cooldown_s: must be between 1 and 604800, got 0",
            "rate_limited.statuses[1]: must be an HTTP status between 100 and 599, got 99",
            "error_rate.ratio: must be greater than 0 and at most 1, got 1.5",
            "error_rate.min_requests: must be between 1 and 4294967295, got 0",
            "traffic_spike.factor: must be greater than 1 and at most 1000000, got 1",
            "traffic_spike.alpha: must be greater than 0 and at most 1, got 0",
            "traffic_spike.warmup_windows: must be between 1 and 1000, got 0",
        ] {
            assert!(
                message.contains(expected),
                "missing `{expected}` in {message}"
            );
        }
        assert_eq!(message.matches("; ").count(), 11, "{message}");
    }

    #[test]
    fn a_disabled_detector_is_still_validated() {
        let message = problems(r#"{"error_rate":{"enabled":false,"ratio":0}}"#);
        assert_eq!(
            message,
            "error_rate.ratio: must be greater than 0 and at most 1, got 0"
        );
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_rejected() {
        let err = problems(r#"{"auth_failure":{}}"#);
        assert!(err.starts_with("unknown field `auth_failure`"), "{err}");
        let err = problems(r#"{"auth_failures":{"treshold":1}}"#);
        assert!(err.starts_with("unknown field `treshold`"), "{err}");
        let err = problems(r#"{"rate_limited":{"by":"ip"}}"#);
        assert!(err.contains("unknown variant `ip`"), "{err}");
        let err = problems(r#"{"error_rate":{"severity":"info"}}"#);
        assert!(err.contains("unknown variant `info`"), "{err}");
    }

    #[test]
    fn kinds_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("nope"), None);
    }
}
