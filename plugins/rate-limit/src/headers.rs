//! The response fields: `RateLimit-Policy` and `RateLimit` as
//! draft-ietf-httpapi-ratelimit-headers-10 defines them, the older
//! `X-RateLimit-*` trio, and the state carried from `on_request` to
//! `on_response`.

use std::fmt::Write as _;

use portcullis_plugin_kit::http::quoted_string;
use serde::{Deserialize, Serialize};

use crate::algo::seconds_until;
use crate::config::{Limit, Report};
use crate::eval::Status;

/// The request attribute that carries the fields' values from `on_request`
/// to `on_response` (which may run in another instance).
pub(crate) const ATTRIBUTE: &str = "rate_limit";

/// What `on_request` leaves for `on_response`: the `RateLimit-Policy` value
/// and the policies' states (their reset times are absolute, so that `t` is
/// computed when the response leaves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Carried {
    /// The `RateLimit-Policy` value.
    #[serde(rename = "p")]
    pub(crate) policy: String,
    /// The state of each policy that counted the request.
    #[serde(rename = "s")]
    pub(crate) statuses: Vec<Status>,
}

/// The `RateLimit-Policy` value for `limits` at `now_ms`: one quota policy
/// item per limit, `"name";q=<quota or rate>;w=<window or period in s>`.
pub(crate) fn policy_field<'a>(limits: impl IntoIterator<Item = &'a Limit>, now_ms: u64) -> String {
    let mut out = String::new();
    for limit in limits {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&quoted_string(&limit.name));
        let _ = write!(out, ";q={};w={}", limit.q(), limit.w(now_ms));
    }
    out
}

/// The policy closest to exhaustion: the fewest requests left, and of
/// those the one that takes longest to give more.
pub(crate) fn closest(statuses: &[Status]) -> Option<&Status> {
    statuses
        .iter()
        .min_by(|a, b| a.r.cmp(&b.r).then(b.reset_at_ms.cmp(&a.reset_at_ms)))
}

/// The `RateLimit` value at `now_ms`: one service limit item per policy,
/// `"name";r=<remaining>;t=<seconds until more quota>` (`t` left out when
/// nothing is used up), for every policy or only the closest.
pub(crate) fn rate_limit_field(statuses: &[Status], now_ms: u64, report: Report) -> String {
    let listed: Vec<&Status> = match report {
        Report::All => statuses.iter().collect(),
        Report::Closest => closest(statuses).into_iter().collect(),
    };
    let mut out = String::new();
    for status in listed {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&quoted_string(&status.name));
        let _ = write!(out, ";r={}", status.r);
        if let Some(at) = status.reset_at_ms {
            let _ = write!(out, ";t={}", seconds_until(at, now_ms));
        }
    }
    out
}

/// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
/// (seconds) of the policy closest to exhaustion.
pub(crate) fn legacy_fields(statuses: &[Status], now_ms: u64) -> Vec<(&'static str, String)> {
    let Some(status) = closest(statuses) else {
        return Vec::new();
    };
    let reset = status.reset_at_ms.map_or(0, |at| seconds_until(at, now_ms));
    vec![
        ("x-ratelimit-limit", status.q.to_string()),
        ("x-ratelimit-remaining", status.r.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ]
}

/// `Retry-After` for a request refused until `retry_at_ms`: whole seconds,
/// rounded up, at least 1.
pub(crate) fn retry_after(retry_at_ms: u64, now_ms: u64) -> u64 {
    seconds_until(retry_at_ms, now_ms).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::tests::limits;

    fn status(name: &str, q: u64, r: u64, reset_at_ms: Option<u64>) -> Status {
        Status {
            name: name.into(),
            q,
            r,
            reset_at_ms,
        }
    }

    #[test]
    fn policies_are_a_structured_list() {
        let limits = limits(
            r#"{"limits":[
                {"rate":5,"per":"second"},
                {"quota":1000,"per":"day"},
                {"name":"say \"hi\"\\","rate":100,"per":"minute","burst":10},
                {"quota":7,"per":"month"}
            ]}"#,
        );
        // 2024-02-10: February 2024 has 29 days.
        let now = 1_707_523_200_000;
        assert_eq!(
            policy_field(&limits, now),
            r#""per-second";q=5;w=1, "daily";q=1000;w=86400, "say \"hi\"\\";q=100;w=60, "monthly";q=7;w=2505600"#
        );
        assert_eq!(policy_field(&limits[..0], now), "");
    }

    #[test]
    fn rate_limit_lists_every_policy_or_the_closest() {
        let now = 1_000_000;
        let statuses = [
            status("per-second", 5, 3, Some(now + 200)),
            status("daily", 1000, 998, Some(now + 3_600_500)),
        ];
        assert_eq!(
            rate_limit_field(&statuses, now, Report::All),
            r#""per-second";r=3;t=1, "daily";r=998;t=3601"#
        );
        assert_eq!(
            rate_limit_field(&statuses, now, Report::Closest),
            r#""per-second";r=3;t=1"#
        );
        // `t` counts down to the reset as the response leaves, and stops at 0.
        assert_eq!(
            rate_limit_field(&statuses[1..], now + 3_600_000, Report::All),
            r#""daily";r=998;t=1"#
        );
        assert_eq!(
            rate_limit_field(&statuses[1..], now + 9_000_000, Report::All),
            r#""daily";r=998;t=0"#
        );
        assert_eq!(
            rate_limit_field(&[status("idle", 5, 5, None)], now, Report::All),
            r#""idle";r=5"#
        );
    }

    #[test]
    fn the_closest_has_fewest_left_then_waits_longest() {
        let a = status("a", 10, 2, Some(5_000));
        let b = status("b", 1000, 2, Some(80_000));
        let c = status("c", 5, 4, Some(1_000));
        assert_eq!(closest(&[a.clone(), b.clone(), c.clone()]), Some(&b));
        assert_eq!(closest(&[c.clone(), a.clone()]), Some(&a));
        assert_eq!(closest(&[]), None);
    }

    #[test]
    fn legacy_fields_describe_the_closest_policy() {
        let now = 50_000;
        let statuses = [
            status("per-second", 5, 4, Some(now + 200)),
            status("daily", 1000, 0, Some(now + 7_200_000)),
        ];
        assert_eq!(
            legacy_fields(&statuses, now),
            [
                ("x-ratelimit-limit", "1000".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", "7200".to_owned()),
            ]
        );
        assert!(legacy_fields(&[], now).is_empty());
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after(10_200, 10_000), 1);
        assert_eq!(retry_after(10_000, 10_000), 1);
        assert_eq!(retry_after(12_001, 10_000), 3);
        assert_eq!(retry_after(86_410_000, 10_000), 86_400);
    }

    #[test]
    fn the_carried_state_round_trips() {
        let carried = Carried {
            policy: r#""daily";q=10;w=86400"#.into(),
            statuses: vec![status("daily", 10, 9, Some(123)), status("x", 1, 1, None)],
        };
        let json = serde_json::to_string(&carried).expect("serializes");
        assert_eq!(
            serde_json::from_str::<Carried>(&json).expect("parses"),
            carried
        );
    }
}
