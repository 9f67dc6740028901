//! `rate_limit`: a Portcullis policy plugin that holds requests to rates
//! (GCRA, with bursts, over any whole number of seconds) and quotas (fixed
//! windows of any whole number of seconds aligned to UTC, or calendar
//! months), counted in the gateway's shared store so that every instance
//! agrees. See the README for the configuration.
//!
//! Counters are keyed by any combination of the caller's consumer or
//! tenant, the client IP, the route and request headers; callers with a
//! role (or one consumer) can have other limits. A refused request is
//! answered with 429, `Retry-After` (when every refusing limit admits
//! again), the state of every limit and a problem+json body; every request
//! that went through the limits gets the `RateLimit-Policy` and `RateLimit`
//! fields of draft-ietf-httpapi-ratelimit-headers-10 (and, if asked for, the
//! `X-RateLimit-*` trio) on its response.
//!
//! The decisions are plain functions of plain values ([`algo`], [`eval`]
//! over the SDK's `Store` trait, [`headers`]); the hooks only read the
//! request, the clock and the store.

use std::cell::Cell;

use portcullis_sdk::{
    Action, Identity, Policy, Reply, Request, RequestChanges, Response, ResponseChanges, policy,
    store, time,
};
use serde::Serialize;

mod algo;
mod config;
mod eval;
mod headers;

use config::{Config, KeyPart, Limit, OnStoreError, Report, Settings};
use eval::{Outcome, Status, counter_key, evaluate};
use headers::{ATTRIBUTE, Carried};

/// At most one store-failure warning per instance in this many ms; the
/// others are counted and the count is given with the next warning.
const WARN_EVERY_MS: u64 = 10_000;

/// One route's `rate_limit`, built from a validated [`Config`].
struct RateLimit {
    settings: Settings,
    /// When this instance last logged a store failure.
    last_warning_ms: Cell<Option<u64>>,
    /// Store failures not logged since then.
    suppressed: Cell<u64>,
}

#[policy]
impl Policy for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(RateLimit::with(config.build()?))
    }

    fn on_request(&self, req: &Request) -> Action {
        let identity = if self.settings.needs_identity {
            req.identity()
        } else {
            None
        };
        let limits = match &identity {
            Some(identity) => self
                .settings
                .limits_for(Some(&identity.consumer), &identity.roles),
            None => self.settings.limits_for(None, &[]),
        };
        let mut facts = Facts {
            req,
            identity,
            ip: None,
            route: None,
        };
        let keyed: Vec<(&Limit, String)> = limits
            .iter()
            .filter_map(|limit| {
                counter_key(
                    limit,
                    &mut |part| facts.part(part),
                    self.settings.missing_key,
                )
                .map(|key| (limit, key))
            })
            .collect();
        if keyed.is_empty() {
            return Action::next();
        }
        let now_ms = time::now_ms();
        let evaluation = evaluate(&store::Shared, &keyed, now_ms, self.settings.on_store_error);
        for (name, failure) in &evaluation.failures {
            self.warn_store_failure(name, &failure.to_string(), now_ms);
        }
        self.decide(&keyed, evaluation.outcome, now_ms)
    }

    fn on_response(&self, req: &Request, _resp: &Response) -> ResponseChanges {
        // Carried from `on_request`, which may have run on another instance.
        match req.carried::<Carried>(ATTRIBUTE) {
            Ok(Some(carried)) => self.response_changes(&carried, time::now_ms()),
            Ok(None) => ResponseChanges::none(),
            Err(error) => {
                portcullis_sdk::warn!("{error}");
                ResponseChanges::none()
            }
        }
    }
}

/// What the request offers for counter keys, read once each.
struct Facts<'a> {
    req: &'a Request,
    identity: Option<Identity>,
    ip: Option<String>,
    route: Option<String>,
}

impl Facts<'_> {
    /// The value of one key part, if the request has it.
    fn part(&mut self, part: &KeyPart) -> Option<String> {
        match part {
            KeyPart::Consumer => self.identity.as_ref().map(|i| i.consumer.clone()),
            KeyPart::Tenant => self.identity.as_ref().and_then(|i| i.tenant.clone()),
            KeyPart::Ip => Some(self.ip.get_or_insert_with(|| self.req.client_ip()).clone()),
            KeyPart::Route => Some(self.route.get_or_insert_with(|| self.req.route()).clone()),
            KeyPart::Header(name) => self.req.header(name),
        }
    }
}

/// The problem+json body of a refusal (RFC 9457, with the problem types of
/// draft-ietf-httpapi-ratelimit-headers-10 §5).
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(rename = "violated-policies", skip_serializing_if = "Vec::is_empty")]
    violated_policies: Vec<&'a str>,
}

impl Problem<'_> {
    fn reply(&self) -> Reply {
        Reply::new(self.status)
            .header("content-type", "application/problem+json")
            .body(serde_json::to_vec(self).unwrap_or_default())
    }
}

impl RateLimit {
    /// The plugin for validated settings.
    fn with(settings: Settings) -> Self {
        RateLimit {
            settings,
            last_warning_ms: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Logs a store failure, at most once per [`WARN_EVERY_MS`] per
    /// instance, so that a full store does not flood the log.
    fn warn_store_failure(&self, limit: &str, failure: &str, now_ms: u64) {
        if self
            .last_warning_ms
            .get()
            .is_some_and(|last| now_ms.saturating_sub(last) < WARN_EVERY_MS)
        {
            self.suppressed.set(self.suppressed.get() + 1);
            return;
        }
        self.last_warning_ms.set(Some(now_ms));
        let consequence = match self.settings.on_store_error {
            OnStoreError::Allow => {
                "the limit is not applied to this request (on_store_error = \"allow\")"
            }
            OnStoreError::Deny => "the request is refused with 503 (on_store_error = \"deny\")",
        };
        let suppressed = self.suppressed.replace(0);
        let also = if suppressed > 0 {
            format!(" ({suppressed} more store failures since the last warning)")
        } else {
            String::new()
        };
        portcullis_sdk::warn!("limit `{limit}`: the store failed: {failure}; {consequence}{also}");
    }

    /// The action for a request whose `keyed` limits decided `outcome` at
    /// `now_ms`.
    fn decide(&self, keyed: &[(&Limit, String)], outcome: Outcome, now_ms: u64) -> Action {
        let settings = &self.settings;
        match outcome {
            Outcome::Allowed(statuses) => {
                if statuses.is_empty() || !(settings.rate_limit_headers || settings.legacy_headers)
                {
                    return Action::next();
                }
                let applied = keyed
                    .iter()
                    .map(|(limit, _)| *limit)
                    .filter(|limit| statuses.iter().any(|s| s.name == limit.name));
                let carried = Carried {
                    policy: headers::policy_field(applied, now_ms),
                    statuses,
                };
                RequestChanges::new().carry(ATTRIBUTE, &carried).into()
            }
            Outcome::Denied {
                statuses,
                violated,
                retry_at_ms,
            } => {
                let retry_after = headers::retry_after(retry_at_ms, now_ms);
                let names = violated
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let limits = if violated.len() == 1 {
                    "limit"
                } else {
                    "limits"
                };
                let mut reply = Problem {
                    kind: "https://iana.org/assignments/http-problem-types#quota-exceeded",
                    title: "Too Many Requests",
                    status: 429,
                    detail: format!("rate {limits} {names} exceeded; retry in {retry_after} s"),
                    violated_policies: violated.iter().map(String::as_str).collect(),
                }
                .reply()
                .header("retry-after", retry_after.to_string());
                if settings.rate_limit_headers {
                    // Every policy, whatever `report` says: the client must
                    // be able to tell which limits bit and when each
                    // recovers.
                    let policy = headers::policy_field(keyed.iter().map(|(l, _)| *l), now_ms);
                    reply = reply.header("ratelimit-policy", policy).header(
                        "ratelimit",
                        headers::rate_limit_field(&statuses, now_ms, Report::All),
                    );
                }
                if settings.legacy_headers {
                    for (name, value) in headers::legacy_fields(&statuses, now_ms) {
                        reply = reply.header(name, value);
                    }
                }
                reply.into()
            }
            Outcome::Failed => Problem {
                kind: "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity",
                title: "Service Unavailable",
                status: 503,
                detail: "rate limits cannot be checked right now".to_owned(),
                violated_policies: Vec::new(),
            }
            .reply()
            .header("retry-after", "1")
            .into(),
        }
    }

    /// The fields added to a response that went through the limits, with
    /// `t` and `X-RateLimit-Reset` counted from `now_ms`.
    ///
    /// `RateLimit-Policy` and `RateLimit` are lists, added beside any the
    /// upstream sent (a list may be split over several field lines); the
    /// single-valued `X-RateLimit-*` fields replace the upstream's.
    fn response_changes(&self, carried: &Carried, now_ms: u64) -> ResponseChanges {
        let mut changes = ResponseChanges::none();
        let statuses: &[Status] = &carried.statuses;
        if statuses.is_empty() {
            return changes;
        }
        if self.settings.rate_limit_headers {
            changes = changes
                .add_header("ratelimit-policy", carried.policy.as_str())
                .add_header(
                    "ratelimit",
                    headers::rate_limit_field(statuses, now_ms, self.settings.report),
                );
        }
        if self.settings.legacy_headers {
            for (name, value) in headers::legacy_fields(statuses, now_ms) {
                changes = changes.set_header(name, value);
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_plugin_kit::testing;
    use portcullis_sdk::store::MemoryStore;

    fn plugin(json: &str) -> RateLimit {
        RateLimit::with(testing::valid(json, Config::build))
    }

    fn keyed(plugin: &RateLimit) -> Vec<(&Limit, String)> {
        plugin
            .settings
            .limits
            .iter()
            .map(|l| {
                let key = counter_key(l, &mut |_| Some("k".into()), plugin.settings.missing_key)
                    .expect("key");
                (l, key)
            })
            .collect()
    }

    const NOW: u64 = 1_741_996_798_000; // 2025-03-14T23:59:58Z

    #[test]
    fn an_admitted_request_carries_the_fields_to_the_response() {
        let plugin = plugin(
            r#"{"legacy_headers":true,"limits":[{"rate":5,"per":"second"},{"quota":1000,"per":"day"}]}"#,
        );
        let keyed = keyed(&plugin);
        let store = MemoryStore::at(NOW);
        let evaluation = evaluate(&store, &keyed, NOW, OnStoreError::Allow);
        let changes = testing::continued(plugin.decide(&keyed, evaluation.outcome, NOW));
        let [(name, json)] = &changes.attributes[..] else {
            panic!("one attribute: {:?}", changes.attributes);
        };
        assert_eq!(name, ATTRIBUTE);
        let carried: Carried = serde_json::from_str(json).expect("carried state");
        assert_eq!(
            carried.policy,
            r#""per-second";q=5;w=1, "daily";q=1000;w=86400"#
        );
        // The response leaves half a second later.
        let response = plugin.response_changes(&carried, NOW + 500);
        assert_eq!(
            response.add_headers,
            [
                (
                    "ratelimit-policy".to_owned(),
                    r#""per-second";q=5;w=1, "daily";q=1000;w=86400"#.to_owned()
                ),
                (
                    "ratelimit".to_owned(),
                    r#""per-second";r=4;t=0, "daily";r=999;t=2"#.to_owned()
                ),
            ]
        );
        assert_eq!(
            response.set_headers,
            [
                ("x-ratelimit-limit".to_owned(), "5".to_owned()),
                ("x-ratelimit-remaining".to_owned(), "4".to_owned()),
                ("x-ratelimit-reset".to_owned(), "0".to_owned()),
            ]
        );
    }

    #[test]
    fn a_refused_request_gets_429_with_retry_after_and_the_fields() {
        let plugin = plugin(
            r#"{"legacy_headers":true,"limits":[{"rate":1,"per":"minute"},{"quota":10,"per":"day"}]}"#,
        );
        let keyed = keyed(&plugin);
        let store = MemoryStore::at(NOW);
        let first = evaluate(&store, &keyed, NOW, OnStoreError::Allow);
        assert!(matches!(first.outcome, Outcome::Allowed(_)));
        let second = evaluate(&store, &keyed, NOW + 1500, OnStoreError::Allow);
        let reply = testing::replied(plugin.decide(&keyed, second.outcome, NOW + 1500));
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header_value("retry-after"), Some("59"));
        assert_eq!(
            reply.header_value("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(
            reply.header_value("ratelimit-policy"),
            Some(r#""per-minute";q=1;w=60, "daily";q=10;w=86400"#)
        );
        assert_eq!(
            reply.header_value("ratelimit"),
            Some(r#""per-minute";r=0;t=59, "daily";r=9;t=1"#),
            "every policy, the daily quota not counting the refused request"
        );
        assert_eq!(reply.header_value("x-ratelimit-remaining"), Some("0"));
        assert_eq!(reply.header_value("x-ratelimit-reset"), Some("59"));
        let body = testing::json_body(&reply);
        assert_eq!(
            body,
            serde_json::json!({
                "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
                "title": "Too Many Requests",
                "status": 429,
                "detail": "rate limit `per-minute` exceeded; retry in 59 s",
                "violated-policies": ["per-minute"],
            })
        );
    }

    #[test]
    fn headers_can_be_turned_off() {
        let plugin = plugin(r#"{"rate_limit_headers":false,"limits":[{"rate":1,"per":"hour"}]}"#);
        let keyed = keyed(&plugin);
        let store = MemoryStore::at(NOW);
        let first = evaluate(&store, &keyed, NOW, OnStoreError::Allow);
        assert_eq!(plugin.decide(&keyed, first.outcome, NOW), Action::next());
        let second = evaluate(&store, &keyed, NOW, OnStoreError::Allow);
        let reply = testing::replied(plugin.decide(&keyed, second.outcome, NOW));
        assert_eq!(reply.header_value("retry-after"), Some("3600"));
        assert_eq!(reply.header_value("ratelimit"), None);
        assert_eq!(reply.header_value("x-ratelimit-limit"), None);
    }

    #[test]
    fn a_store_failure_closed_is_a_503() {
        let plugin = plugin(r#"{"on_store_error":"deny","limits":[{"rate":1,"per":"hour"}]}"#);
        let keyed = keyed(&plugin);
        let reply = testing::replied(plugin.decide(&keyed, Outcome::Failed, NOW));
        assert_eq!(reply.status, 503);
        let body = testing::json_body(&reply);
        assert_eq!(body["status"], 503);
        assert!(body.get("violated-policies").is_none());
    }

    #[test]
    fn nothing_is_carried_when_no_limit_counted() {
        let plugin = plugin(r#"{"limits":[{"rate":1,"per":"hour"}]}"#);
        let keyed = keyed(&plugin);
        assert_eq!(
            plugin.decide(&keyed, Outcome::Allowed(vec![]), NOW),
            Action::next()
        );
    }
}
