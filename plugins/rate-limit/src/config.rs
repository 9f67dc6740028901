//! The plugin's configuration and its validation.

use portcullis_plugin_kit::http::is_token_byte;
use serde::Deserialize;

use crate::algo::{Gcra, Window};

/// Largest `rate`, `burst` of a rate limit.
const MAX_RATE: u64 = 1_000_000;
/// Largest `quota`.
const MAX_QUOTA: u64 = 1_000_000_000_000;
/// Longest policy name.
const MAX_NAME: usize = 64;
/// Longest period of a rate or window of a quota, in seconds: 365 days.
const MAX_WINDOW_S: u64 = 365 * 86_400;

/// The configuration of one route's `rate_limit` plugin.
///
/// ```toml
/// [routes.plugins.config]
/// by = ["consumer"]
/// limits = [
///     { rate = 5, per = "second", burst = 10 },
///     { quota = 1000, per = "day" },
/// ]
/// overrides = [{ role = "gold", limits = [{ rate = 50, per = "second" }] }]
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// What the counters are keyed by, for limits that do not say.
    #[serde(default = "default_by")]
    by: Vec<String>,
    /// What happens when a part of the key is missing.
    #[serde(default)]
    missing_key: MissingKey,
    /// The limits every request is held to (unless an override matches).
    #[serde(default)]
    limits: Vec<LimitConfig>,
    /// Other limits for some roles or consumers; the first match wins.
    #[serde(default)]
    overrides: Vec<OverrideConfig>,
    /// What happens when the store fails.
    #[serde(default)]
    on_store_error: OnStoreError,
    /// Whether to send the `RateLimit-Policy` and `RateLimit` fields.
    #[serde(default = "default_true")]
    rate_limit_headers: bool,
    /// Which policies the `RateLimit` field lists.
    #[serde(default)]
    report: Report,
    /// Whether to send `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    #[serde(default)]
    legacy_headers: bool,
}

/// One limit: a rate (`rate`, `per`, `burst`) or a quota (`quota`, `per`).
/// `per` is a word (`second`, `minute`, `hour`, `day`, and `month` for
/// quotas) or a duration (`10s`, `2m`, `1h30m`); `window_s` gives the
/// same in seconds.
///
/// ```toml
/// { name = "login", rate = 5, per = "second", burst = 5, by = ["ip"] }
/// { quota = 100, per = "10s" }
/// { rate = 30, window_s = 90 }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitConfig {
    /// The policy's name in the response fields.
    #[serde(default)]
    name: Option<String>,
    /// Requests per `per`, enforced smoothly (GCRA).
    #[serde(default)]
    rate: Option<u64>,
    /// Requests per calendar `per` (a fixed window aligned to UTC).
    #[serde(default)]
    quota: Option<u64>,
    /// The period of `rate` or the window of `quota`.
    #[serde(default)]
    per: Option<String>,
    /// The same in whole seconds, instead of `per`.
    #[serde(default)]
    window_s: Option<u64>,
    /// Requests a rate admits at once after a quiet period.
    #[serde(default)]
    burst: Option<u64>,
    /// What this limit's counters are keyed by, instead of the plugin's `by`.
    #[serde(default)]
    by: Option<Vec<String>>,
}

/// Limits for the callers with one role, or one consumer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideConfig {
    /// Matches callers whose identity has this role.
    #[serde(default)]
    role: Option<String>,
    /// Matches the caller with this consumer name.
    #[serde(default)]
    consumer: Option<String>,
    /// The limits that replace the plugin's `limits` for them.
    limits: Vec<LimitConfig>,
}

/// What happens to a limit when a part of its key is missing from the
/// request (no identity for `consumer`, no tenant, no header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MissingKey {
    /// The client's IP address stands in for the missing part.
    #[default]
    ClientIp,
    /// The limit does not apply to the request.
    Skip,
}

/// What happens to a request when the store fails (e.g. it is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnStoreError {
    /// The failing limit is ignored and the request goes on (fail open).
    #[default]
    Allow,
    /// The request is answered with 503 (fail closed).
    Deny,
}

/// Which policies the `RateLimit` field lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Report {
    /// Every policy that applied to the request.
    #[default]
    All,
    /// Only the one closest to exhaustion.
    Closest,
}

fn default_by() -> Vec<String> {
    vec!["consumer".to_owned()]
}

fn default_true() -> bool {
    true
}

/// A part of a counter's key, read from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyPart {
    /// The identity's consumer.
    Consumer,
    /// The identity's tenant.
    Tenant,
    /// The client's IP address.
    Ip,
    /// The route's name.
    Route,
    /// A request header's first value (lowercase name).
    Header(String),
}

impl KeyPart {
    /// Parses `consumer`, `tenant`, `ip`, `route` or `header:<name>`.
    fn parse(text: &str) -> Result<KeyPart, String> {
        Ok(match text {
            "consumer" => KeyPart::Consumer,
            "tenant" => KeyPart::Tenant,
            "ip" => KeyPart::Ip,
            "route" => KeyPart::Route,
            _ => match text.strip_prefix("header:") {
                Some(name) if !name.is_empty() && name.bytes().all(is_token_byte) => {
                    KeyPart::Header(name.to_ascii_lowercase())
                }
                Some(_) => return Err(format!("`{text}` does not name a valid header")),
                None => {
                    return Err(format!(
                        "`{text}` is not one of `consumer`, `tenant`, `ip`, `route`, `header:<name>`"
                    ));
                }
            },
        })
    }

    /// Whether the part comes from the identity.
    fn is_from_identity(&self) -> bool {
        matches!(self, KeyPart::Consumer | KeyPart::Tenant)
    }
}

/// What a limit counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A rate, enforced with GCRA.
    Rate {
        /// The algorithm's parameters.
        gcra: Gcra,
        /// Requests per period.
        rate: u64,
        /// The period, in seconds.
        period_s: u64,
    },
    /// A quota per fixed or calendar window.
    Quota {
        /// Requests per window.
        quota: u64,
        /// The window.
        window: Window,
    },
}

/// One validated limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limit {
    /// The policy name, as shown in the response fields.
    pub(crate) name: String,
    /// How it counts.
    pub(crate) kind: Kind,
    /// What its counters are keyed by; empty: one counter for everybody.
    pub(crate) by: Vec<KeyPart>,
    /// The start of its store keys: the name and the parameters, so that
    /// two different limits never share a counter.
    pub(crate) id: String,
}

impl Limit {
    /// The `q` of the policy: the rate or the quota.
    pub(crate) fn q(&self) -> u64 {
        match self.kind {
            Kind::Rate { rate, .. } => rate,
            Kind::Quota { quota, .. } => quota,
        }
    }

    /// The `w` of the policy, in seconds: the period, or the length of the
    /// calendar window holding `now_ms` (months differ).
    pub(crate) fn w(&self, now_ms: u64) -> u64 {
        match self.kind {
            Kind::Rate { period_s, .. } => period_s,
            Kind::Quota { window, .. } => {
                let (start, end) = window.window(now_ms);
                (end - start) / 1000
            }
        }
    }
}

/// Who an override applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Matcher {
    /// Callers with this role.
    Role(String),
    /// The caller with this consumer name.
    Consumer(String),
}

/// Limits for some callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Override {
    /// Who.
    pub(crate) matcher: Matcher,
    /// Their limits (possibly none: unlimited).
    pub(crate) limits: Vec<Limit>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The default limits.
    pub(crate) limits: Vec<Limit>,
    /// The overrides, in order.
    pub(crate) overrides: Vec<Override>,
    /// What happens when a key part is missing.
    pub(crate) missing_key: MissingKey,
    /// What happens when the store fails.
    pub(crate) on_store_error: OnStoreError,
    /// Send `RateLimit-Policy` and `RateLimit`.
    pub(crate) rate_limit_headers: bool,
    /// Which policies `RateLimit` lists.
    pub(crate) report: Report,
    /// Send the `X-RateLimit-*` trio.
    pub(crate) legacy_headers: bool,
    /// Whether any decision needs the caller's identity.
    pub(crate) needs_identity: bool,
}

impl Settings {
    /// The limits for a caller with this consumer and these roles: those of
    /// the first matching override, else the default ones.
    pub(crate) fn limits_for(&self, consumer: Option<&str>, roles: &[String]) -> &[Limit] {
        self.overrides
            .iter()
            .find(|o| match &o.matcher {
                Matcher::Role(role) => roles.iter().any(|r| r == role),
                Matcher::Consumer(name) => consumer == Some(name.as_str()),
            })
            .map_or(&self.limits, |o| &o.limits)
    }
}

impl Config {
    /// Validates the configuration. Reports every problem at once, each
    /// naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Settings, String> {
        let mut problems = Vec::new();
        let by = parse_by(&self.by, "by", &mut problems);
        if self.limits.is_empty() {
            problems.push("limits: at least one limit is required".to_owned());
        }
        let limits = build_limits(self.limits, &by, "limits", &mut problems);
        let mut overrides = Vec::with_capacity(self.overrides.len());
        for (i, entry) in self.overrides.into_iter().enumerate() {
            let path = format!("overrides[{i}]");
            let matcher = match (entry.role, entry.consumer) {
                (Some(_), Some(_)) => {
                    problems.push(format!("{path}: set `role` or `consumer`, not both"));
                    None
                }
                (None, None) => {
                    problems.push(format!("{path}: set `role` or `consumer`"));
                    None
                }
                (Some(role), None) if role.is_empty() => {
                    problems.push(format!("{path}.role: must not be empty"));
                    None
                }
                (None, Some(consumer)) if consumer.is_empty() => {
                    problems.push(format!("{path}.consumer: must not be empty"));
                    None
                }
                (Some(role), None) => Some(Matcher::Role(role)),
                (None, Some(consumer)) => Some(Matcher::Consumer(consumer)),
            };
            let limits = build_limits(entry.limits, &by, &format!("{path}.limits"), &mut problems);
            if let Some(matcher) = matcher {
                overrides.push(Override { matcher, limits });
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let needs_identity = !overrides.is_empty()
            || limits
                .iter()
                .chain(overrides.iter().flat_map(|o| &o.limits))
                .any(|l| l.by.iter().any(KeyPart::is_from_identity));
        Ok(Settings {
            limits,
            overrides,
            missing_key: self.missing_key,
            on_store_error: self.on_store_error,
            rate_limit_headers: self.rate_limit_headers,
            report: self.report,
            legacy_headers: self.legacy_headers,
            needs_identity,
        })
    }
}

/// Parses a `by` list, reporting problems under `path`.
fn parse_by(entries: &[String], path: &str, problems: &mut Vec<String>) -> Vec<KeyPart> {
    let mut parts: Vec<KeyPart> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match KeyPart::parse(entry) {
            Ok(part) if parts.contains(&part) => {
                problems.push(format!("{path}[{i}]: `{entry}` is listed twice"));
            }
            Ok(part) => parts.push(part),
            Err(message) => problems.push(format!("{path}[{i}]: {message}")),
        }
    }
    parts
}

/// Validates a list of limits under `path` (`limits`, `overrides[0].limits`).
fn build_limits(
    entries: Vec<LimitConfig>,
    default_by: &[KeyPart],
    path: &str,
    problems: &mut Vec<String>,
) -> Vec<Limit> {
    let mut limits: Vec<(usize, Limit)> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let here = format!("{path}[{i}]");
        let Some(limit) = build_limit(entry, default_by, &here, problems) else {
            continue;
        };
        if let Some((first, _)) = limits.iter().find(|(_, l)| l.name == limit.name) {
            problems.push(format!(
                "{here}.name: the policy name `{}` is already used by {path}[{first}]; give one of them another `name`",
                limit.name
            ));
            continue;
        }
        limits.push((i, limit));
    }
    limits.into_iter().map(|(_, l)| l).collect()
}

/// Validates one limit; `None` (with problems reported) if it is bad.
fn build_limit(
    entry: LimitConfig,
    default_by: &[KeyPart],
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Limit> {
    let before = problems.len();
    let by = match &entry.by {
        Some(by) => parse_by(by, &format!("{path}.by"), problems),
        None => default_by.to_vec(),
    };
    let kind = match (entry.rate, entry.quota) {
        (Some(_), Some(_)) => {
            problems.push(format!("{path}: set `rate` or `quota`, not both"));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{path}: set `rate` (with `per` = second, minute, hour, day or a duration) or `quota` (with `per` = minute, hour, day, month or a duration)"
            ));
            None
        }
        (Some(rate), None) => {
            let period_s = match span(&entry, "rate", path, problems) {
                Some(Span::Seconds(seconds)) => Some(seconds),
                Some(Span::Month) => {
                    problems.push(format!(
                        "{path}.per: `month` is not a rate period (months differ in length); use a duration such as `30d`, or a `quota` per month"
                    ));
                    None
                }
                None => None,
            };
            if !(1..=MAX_RATE).contains(&rate) {
                problems.push(format!("{path}.rate: must be between 1 and {MAX_RATE}"));
            }
            let burst = entry.burst.unwrap_or(rate);
            if !(1..=MAX_RATE).contains(&burst) {
                problems.push(format!("{path}.burst: must be between 1 and {MAX_RATE}"));
            }
            period_s.map(|period_s| Kind::Rate {
                gcra: Gcra::new(rate, period_s * 1000, burst),
                rate,
                period_s,
            })
        }
        (None, Some(quota)) => {
            if entry.burst.is_some() {
                problems.push(format!(
                    "{path}.burst: only a `rate` has a burst; a `quota` may be used up at once"
                ));
            }
            if !(1..=MAX_QUOTA).contains(&quota) {
                problems.push(format!("{path}.quota: must be between 1 and {MAX_QUOTA}"));
            }
            span(&entry, "quota", path, problems).map(|span| Kind::Quota {
                quota,
                window: match span {
                    Span::Seconds(seconds) => Window::Fixed(seconds),
                    Span::Month => Window::Month,
                },
            })
        }
    };
    let name = match (entry.name, kind) {
        (Some(name), _) => name,
        (None, Some(kind)) => derived_name(kind),
        (None, None) => String::new(),
    };
    if kind.is_some() && !valid_name(&name) {
        problems.push(format!(
            "{path}.name: must be 1 to {MAX_NAME} printable ASCII characters"
        ));
    }
    let kind = kind?;
    if problems.len() > before {
        return None;
    }
    let params = match kind {
        Kind::Rate { gcra, period_s, .. } => format!("r{}us{}s", gcra.interval_us(), period_s),
        Kind::Quota { quota, window } => {
            let window = match window {
                Window::Fixed(60) => "Minute".to_owned(),
                Window::Fixed(3600) => "Hour".to_owned(),
                Window::Fixed(86_400) => "Day".to_owned(),
                Window::Fixed(seconds) => format!("{seconds}s"),
                Window::Month => "Month".to_owned(),
            };
            format!("q{quota}{window}")
        }
    };
    let id = format!("{}:{name}:{params}", name.len());
    Some(Limit { name, kind, by, id })
}

/// The length of a rate's period or a quota's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// A fixed number of seconds.
    Seconds(u64),
    /// A calendar month.
    Month,
}

/// The span a limit's `per` or `window_s` gives (one of them, required),
/// for a limit of the kind `what` (`rate` or `quota`); `None`, with the
/// problem reported, if there is none or it is bad.
fn span(entry: &LimitConfig, what: &str, path: &str, problems: &mut Vec<String>) -> Option<Span> {
    let (key, seconds) = match (entry.per.as_deref(), entry.window_s) {
        (Some(_), Some(_)) => {
            problems.push(format!("{path}: set `per` or `window_s`, not both"));
            return None;
        }
        (None, None) => {
            problems.push(format!(
                "{path}.per: required with `{what}` (or `window_s`)"
            ));
            return None;
        }
        (None, Some(seconds)) => ("window_s", seconds),
        (Some(per), None) => {
            let seconds = match per {
                "second" => 1,
                "minute" => 60,
                "hour" => 3600,
                "day" => 86_400,
                "month" => return Some(Span::Month),
                _ => match humantime::parse_duration(per) {
                    Ok(duration) if duration.subsec_nanos() == 0 => duration.as_secs(),
                    Ok(_) => {
                        problems.push(format!(
                            "{path}.per: `{per}` is not a whole number of seconds"
                        ));
                        return None;
                    }
                    Err(_) => {
                        let expected = if what == "rate" {
                            "is not a rate period; use `second`, `minute`, `hour`, `day`"
                        } else {
                            "is not a quota window; use `second`, `minute`, `hour`, `day`, `month`"
                        };
                        problems.push(format!(
                            "{path}.per: `{per}` {expected} or a duration such as `10s`, `2m` or `1h30m`"
                        ));
                        return None;
                    }
                },
            };
            ("per", seconds)
        }
    };
    if !(1..=MAX_WINDOW_S).contains(&seconds) {
        problems.push(format!(
            "{path}.{key}: must be 1 second to 365 days ({MAX_WINDOW_S} s)"
        ));
        return None;
    }
    Some(Span::Seconds(seconds))
}

/// The policy name of a limit without a `name`: `per-second`,
/// `per-minute`, `per-hour`, `per-day` or `per-<duration>` (`per-10s`,
/// `per-2m`) for rates; `minutely`, `hourly`, `daily`, `monthly` or
/// `every-<duration>` (`every-10s`) for quotas.
fn derived_name(kind: Kind) -> String {
    match kind {
        Kind::Rate { period_s, .. } => match period_s {
            1 => "per-second".to_owned(),
            60 => "per-minute".to_owned(),
            3600 => "per-hour".to_owned(),
            86_400 => "per-day".to_owned(),
            seconds => format!("per-{}", short_duration(seconds)),
        },
        Kind::Quota { window, .. } => match window {
            Window::Fixed(60) => "minutely".to_owned(),
            Window::Fixed(3600) => "hourly".to_owned(),
            Window::Fixed(86_400) => "daily".to_owned(),
            Window::Fixed(seconds) => format!("every-{}", short_duration(seconds)),
            Window::Month => "monthly".to_owned(),
        },
    }
}

/// `seconds` in the largest unit that divides it: `90s`, `2m`, `3h`, `2d`.
fn short_duration(seconds: u64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A policy name: printable ASCII, so that it can be an sf-string.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    portcullis_plugin_kit::config_test_helpers!(Config => Settings);

    #[test]
    fn defaults_apply() {
        let settings =
            build(r#"{"limits":[{"rate":5,"per":"second"},{"quota":1000,"per":"day"}]}"#)
                .expect("valid");
        assert_eq!(settings.missing_key, MissingKey::ClientIp);
        assert_eq!(settings.on_store_error, OnStoreError::Allow);
        assert_eq!(settings.report, Report::All);
        assert!(settings.rate_limit_headers);
        assert!(!settings.legacy_headers);
        assert!(settings.needs_identity, "keyed by consumer by default");
        let [rate, quota] = &settings.limits[..] else {
            panic!("two limits");
        };
        assert_eq!(rate.name, "per-second");
        assert_eq!(rate.by, [KeyPart::Consumer]);
        assert_eq!(
            rate.kind,
            Kind::Rate {
                gcra: Gcra::new(5, 1000, 5),
                rate: 5,
                period_s: 1
            }
        );
        assert_eq!((rate.q(), rate.w(0)), (5, 1));
        assert_eq!(quota.name, "daily");
        assert_eq!((quota.q(), quota.w(0)), (1000, 86_400));
        assert_ne!(rate.id, quota.id);
    }

    #[test]
    fn every_field_is_read() {
        let settings = build(
            r#"{"by":["ip","header:X-Tenant"],"missing_key":"skip","on_store_error":"deny",
                "rate_limit_headers":false,"report":"closest","legacy_headers":true,
                "limits":[
                    {"name":"burst","rate":60,"per":"minute","burst":3,"by":["route","consumer"]},
                    {"quota":10,"per":"month"},
                    {"quota":10,"per":"hour"},
                    {"quota":10,"per":"minute"},
                    {"rate":10,"per":"hour"},
                    {"rate":10,"per":"day","by":[]}
                ],
                "overrides":[
                    {"role":"gold","limits":[{"rate":50,"per":"second"}]},
                    {"consumer":"ops","limits":[]}
                ]}"#,
        )
        .expect("valid");
        assert_eq!(settings.missing_key, MissingKey::Skip);
        assert_eq!(settings.on_store_error, OnStoreError::Deny);
        assert_eq!(settings.report, Report::Closest);
        assert!(!settings.rate_limit_headers && settings.legacy_headers);
        let names: Vec<_> = settings.limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "burst", "monthly", "hourly", "minutely", "per-hour", "per-day"
            ]
        );
        assert_eq!(settings.limits[0].by, [KeyPart::Route, KeyPart::Consumer]);
        assert_eq!(
            settings.limits[1].by,
            [KeyPart::Ip, KeyPart::Header("x-tenant".into())]
        );
        assert!(settings.limits[5].by.is_empty());
        assert_eq!(
            settings.limits[0].kind,
            Kind::Rate {
                gcra: Gcra::new(60, 60_000, 3),
                rate: 60,
                period_s: 60
            }
        );
        assert_eq!(settings.overrides.len(), 2);
        assert_eq!(settings.overrides[0].matcher, Matcher::Role("gold".into()));
        assert_eq!(
            settings.overrides[0].limits[0].by,
            [KeyPart::Ip, KeyPart::Header("x-tenant".into())],
            "override limits inherit the plugin's `by`"
        );
        assert!(settings.overrides[1].limits.is_empty());
        assert!(settings.needs_identity, "overrides read roles");
    }

    #[test]
    fn windows_of_any_whole_number_of_seconds() {
        let settings = build(
            r#"{"limits":[
                {"rate":5,"per":"10s"},
                {"rate":6,"per":"2m"},
                {"rate":7,"window_s":90},
                {"rate":8,"per":"60s"},
                {"rate":9,"per":"1h30m"},
                {"quota":100,"per":"10s"},
                {"quota":101,"window_s":7200},
                {"quota":102,"per":"1d"},
                {"quota":103,"per":"second"},
                {"quota":104,"per":"month"}
            ]}"#,
        )
        .expect("valid");
        let seen: Vec<(&str, u64, u64)> = settings
            .limits
            .iter()
            .map(|l| (l.name.as_str(), l.q(), l.w(0)))
            .collect();
        assert_eq!(
            seen,
            [
                ("per-10s", 5, 10),
                ("per-2m", 6, 120),
                ("per-90s", 7, 90),
                ("per-minute", 8, 60),
                ("per-90m", 9, 5400),
                ("every-10s", 100, 10),
                ("every-2h", 101, 7200),
                ("daily", 102, 86_400),
                ("every-1s", 103, 1),
                ("monthly", 104, 31 * 86_400),
            ]
        );
        assert_eq!(
            settings.limits[0].kind,
            Kind::Rate {
                gcra: Gcra::new(5, 10_000, 5),
                rate: 5,
                period_s: 10
            }
        );
        assert_eq!(
            settings.limits[5].kind,
            Kind::Quota {
                quota: 100,
                window: Window::Fixed(10)
            }
        );
        // `1d` and `day` are the same window, so the same counter.
        let day = build(r#"{"limits":[{"quota":102,"per":"day"}]}"#).expect("valid");
        assert_eq!(day.limits[0], settings.limits[7]);
    }

    #[test]
    fn identity_is_read_only_when_needed() {
        let settings =
            build(r#"{"by":["ip"],"limits":[{"rate":1,"per":"second"}]}"#).expect("valid");
        assert!(!settings.needs_identity);
        let settings =
            build(r#"{"by":["ip"],"limits":[{"rate":1,"per":"second","by":["tenant"]}]}"#)
                .expect("valid");
        assert!(settings.needs_identity);
    }

    #[test]
    fn the_first_matching_override_wins() {
        let settings = build(
            r#"{"limits":[{"rate":1,"per":"second"}],"overrides":[
                {"role":"gold","limits":[{"rate":50,"per":"second"}]},
                {"role":"silver","limits":[{"rate":20,"per":"second"}]},
                {"consumer":"ops","limits":[]}
            ]}"#,
        )
        .expect("valid");
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let q = |limits: &[Limit]| limits.first().map(Limit::q);
        assert_eq!(q(settings.limits_for(Some("a"), &roles(&[]))), Some(1));
        assert_eq!(
            q(settings.limits_for(Some("a"), &roles(&["silver", "gold"]))),
            Some(50),
            "config order decides, not role order"
        );
        assert_eq!(
            q(settings.limits_for(Some("a"), &roles(&["silver"]))),
            Some(20)
        );
        assert_eq!(q(settings.limits_for(Some("ops"), &roles(&[]))), None);
        assert_eq!(
            q(settings.limits_for(Some("ops"), &roles(&["gold"]))),
            Some(50)
        );
        assert_eq!(q(settings.limits_for(None, &roles(&[]))), Some(1));
    }

    #[test]
    fn bad_limits_are_reported_with_their_key_path() {
        let cases = [
            (
                r#"{"rate":5,"quota":5,"per":"day"}"#,
                "limits[0]: set `rate` or `quota`, not both",
            ),
            (r#"{"per":"day"}"#, "limits[0]: set `rate` (with `per`"),
            (
                r#"{"rate":5}"#,
                "limits[0].per: required with `rate` (or `window_s`)",
            ),
            (
                r#"{"quota":5}"#,
                "limits[0].per: required with `quota` (or `window_s`)",
            ),
            (
                r#"{"rate":5,"per":"month"}"#,
                "limits[0].per: `month` is not a rate period (months differ in length)",
            ),
            (
                r#"{"quota":5,"per":"fortnight"}"#,
                "limits[0].per: `fortnight` is not a quota window",
            ),
            (
                r#"{"rate":5,"per":"1.5s"}"#,
                "limits[0].per: `1.5s` is not a whole number of seconds",
            ),
            (
                r#"{"rate":5,"per":"0s"}"#,
                "limits[0].per: must be 1 second to 365 days",
            ),
            (
                r#"{"quota":5,"per":"366d"}"#,
                "limits[0].per: must be 1 second to 365 days",
            ),
            (
                r#"{"quota":5,"window_s":0}"#,
                "limits[0].window_s: must be 1 second to 365 days",
            ),
            (
                r#"{"rate":5,"per":"second","window_s":1}"#,
                "limits[0]: set `per` or `window_s`, not both",
            ),
            (
                r#"{"rate":0,"per":"second"}"#,
                "limits[0].rate: must be between 1",
            ),
            (
                r#"{"rate":5,"per":"second","burst":0}"#,
                "limits[0].burst: must be between 1",
            ),
            (
                r#"{"quota":5,"per":"day","burst":2}"#,
                "limits[0].burst: only a `rate` has a burst",
            ),
            (
                r#"{"quota":0,"per":"day"}"#,
                "limits[0].quota: must be between 1",
            ),
            (
                r#"{"name":"","rate":1,"per":"second"}"#,
                "limits[0].name: must be 1 to 64 printable ASCII characters",
            ),
            (
                r#"{"name":"tab\there","rate":1,"per":"second"}"#,
                "limits[0].name: must be 1 to 64",
            ),
            (
                r#"{"rate":1,"per":"second","by":["user"]}"#,
                "limits[0].by[0]: `user` is not one of `consumer`, `tenant`, `ip`, `route`, `header:<name>`",
            ),
            (
                r#"{"rate":1,"per":"second","by":["header:"]}"#,
                "limits[0].by[0]: `header:` does not name a valid header",
            ),
            (
                r#"{"rate":1,"per":"second","by":["ip","route","ip"]}"#,
                "limits[0].by[2]: `ip` is listed twice",
            ),
        ];
        for (limit, expected) in cases {
            let message = problems(&format!(r#"{{"limits":[{limit}]}}"#));
            assert!(message.starts_with(expected), "{limit}: {message}");
        }
    }

    #[test]
    fn policy_names_must_be_unique_within_a_list() {
        let message = problems(
            r#"{"limits":[{"quota":5,"per":"day"},{"rate":1,"per":"second"},{"quota":9,"per":"day"}]}"#,
        );
        assert_eq!(
            message,
            "limits[2].name: the policy name `daily` is already used by limits[0]; give one of them another `name`"
        );
        // The same name in the default limits and an override is fine.
        build(
            r#"{"limits":[{"quota":5,"per":"day"}],"overrides":[{"role":"r","limits":[{"quota":50,"per":"day"}]}]}"#,
        )
        .expect("names are per list");
    }

    #[test]
    fn plugin_wide_and_override_problems_are_reported_together() {
        let message = problems(
            r#"{"by":["who"],"overrides":[
                {"limits":[]},
                {"role":"a","consumer":"b","limits":[]},
                {"role":"","limits":[{"rate":1}]}
            ]}"#,
        );
        assert_eq!(
            message,
            "by[0]: `who` is not one of `consumer`, `tenant`, `ip`, `route`, `header:<name>`; \
             limits: at least one limit is required; \
             overrides[0]: set `role` or `consumer`; \
             overrides[1]: set `role` or `consumer`, not both; \
             overrides[2].role: must not be empty; \
             overrides[2].limits[0].per: required with `rate` (or `window_s`)"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for json in [
            r#"{"limits":[],"legacy_header":true}"#,
            r#"{"limits":[{"rate":1,"per":"second","window":"day"}]}"#,
            r#"{"limits":[],"overrides":[{"role":"a","limits":[],"roles":[]}]}"#,
        ] {
            let err = problems(json);
            assert!(err.starts_with("unknown field"), "{err}");
        }
        let err = problems(r#"{"limits":[],"on_store_error":"open"}"#);
        assert!(err.contains("expected `allow` or `deny`"), "{err}");
    }
}
