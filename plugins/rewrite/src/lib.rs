//! `rewrite`: a Portcullis policy plugin that rewrites requests on their
//! way upstream and responses on their way back: the path (strip or
//! replace a prefix, or a regex with captures), the method, the `Host`
//! header, request and response headers (rename, remove, set, add), query
//! parameters (map values, rename, remove, set) and fields of a JSON
//! request body (rename, remove, set to null, set). See the README for the
//! configuration.
//!
//! The hooks only read what the configured rules need from the request and
//! response and hand it to plain functions (modules `uri`, `headers`,
//! `body`), which the unit tests call on the host.

use portcullis_sdk::{
    Action, Body, Needs, Policy, Reply, Request, RequestChanges, Response, ResponseChanges, policy,
};

mod body;
mod config;
mod headers;
mod uri;

use body::{BodyRules, OnProblem};
use config::Config;
use headers::{HeaderPlan, HeaderRules};
use uri::{PathRule, QueryRules};

/// One route's `rewrite`, built from a validated [`Config`].
#[derive(Debug)]
pub(crate) struct Rewrite {
    /// Path rules; the first that matches applies.
    path_rules: Vec<PathRule>,
    /// The method every request gets, if set.
    method: Option<String>,
    /// The `Host` header every request gets, if set.
    host: Option<String>,
    /// Query parameter rules.
    query: QueryRules,
    /// Request header rules.
    request_headers: HeaderRules,
    /// Response header rules.
    response_headers: HeaderRules,
    /// JSON request body rules.
    body: BodyRules,
}

#[policy]
impl Policy for Rewrite {
    type Config = Config;

    // Buffered only on routes whose config has body rules (see `needs`).
    const REQUEST_BODY: bool = true;

    fn new(config: Config) -> Result<Self, String> {
        config.build()
    }

    fn needs(&self) -> Needs {
        Needs {
            request_body: !self.body.is_empty(),
            on_response: !self.response_headers.is_empty(),
            ..Needs::ALL
        }
    }

    fn on_request(&self, req: &Request) -> Action {
        let mut changes = RequestChanges::new();
        if let Some(method) = &self.method {
            changes = changes.method(method.as_str());
        }
        if !self.path_rules.is_empty()
            && let Some(path) = uri::rewrite_path(&self.path_rules, &req.path())
        {
            changes = changes.path(path);
        }
        if !self.query.is_empty()
            && let Some(query) = self.query.apply(&req.query().unwrap_or_default())
        {
            changes = changes.query(query);
        }
        if !self.request_headers.is_empty() {
            changes =
                with_request_edits(changes, self.request_headers.plan(|n| req.header_values(n)));
        }
        if let Some(host) = &self.host {
            changes = changes.set_header("host", host.as_str());
        }
        if !self.body.is_empty() {
            let content_type = req.header("content-type");
            match self.rewrite_body(content_type.as_deref(), req.body()) {
                BodyOutcome::Unchanged => {}
                BodyOutcome::Replace(body) => changes = changes.body(body),
                BodyOutcome::Passed(reason) => {
                    portcullis_sdk::debug!("request body left as is: {reason}");
                }
                BodyOutcome::Refuse(reply) => return reply.into(),
            }
        }
        changes.into()
    }

    fn on_response(&self, _req: &Request, resp: &Response) -> ResponseChanges {
        if self.response_headers.is_empty() {
            return ResponseChanges::none();
        }
        let plan = self.response_headers.plan(|n| resp.header_values(n));
        let mut changes = ResponseChanges::none();
        changes.remove_headers = plan.remove;
        changes.set_headers = plan.set;
        changes.add_headers = plan.add;
        changes
    }
}

/// Adds a header plan to request changes.
fn with_request_edits(mut changes: RequestChanges, plan: HeaderPlan) -> RequestChanges {
    changes.remove_headers.extend(plan.remove);
    changes.set_headers.extend(plan.set);
    changes.add_headers.extend(plan.add);
    changes
}

/// What happens to the request body.
#[derive(Debug)]
enum BodyOutcome {
    /// Nothing to change (no rule matched, or the body is empty).
    Unchanged,
    /// The rewritten body.
    Replace(Vec<u8>),
    /// The body cannot be rewritten and goes on untouched, for this reason.
    Passed(&'static str),
    /// The body cannot be rewritten and the request is refused.
    Refuse(Reply),
}

impl Rewrite {
    /// Applies the body rules to a request body with this `content-type`.
    ///
    /// A body is JSON when its media type is `application/json` or ends in
    /// `+json`. An empty body is left alone. A body over the gateway's cap
    /// follows `on_too_large` (refused with 413); one that is not JSON
    /// (another media type, or JSON that does not parse) follows
    /// `on_not_json` (refused with 415, or 400 for JSON that does not
    /// parse).
    fn rewrite_body(&self, content_type: Option<&str>, body: Body) -> BodyOutcome {
        let bytes = match body {
            Body::NotRequested => return BodyOutcome::Unchanged,
            Body::TooLarge => {
                return self.problem(
                    self.body.on_too_large,
                    413,
                    "request body too large to be rewritten",
                );
            }
            Body::Complete(bytes) => bytes,
        };
        if bytes.is_empty() {
            return BodyOutcome::Unchanged;
        }
        if !content_type.is_some_and(is_json) {
            return self.problem(self.body.on_not_json, 415, "request body is not JSON");
        }
        let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return self.problem(self.body.on_not_json, 400, "request body is not valid JSON");
        };
        if !self.body.apply(&mut doc) {
            return BodyOutcome::Unchanged;
        }
        match serde_json::to_vec(&doc) {
            Ok(out) => BodyOutcome::Replace(out),
            Err(_) => self.problem(self.body.on_not_json, 400, "request body is not valid JSON"),
        }
    }

    fn problem(&self, policy: OnProblem, status: u16, message: &'static str) -> BodyOutcome {
        match policy {
            OnProblem::Pass => BodyOutcome::Passed(message),
            OnProblem::Refuse => BodyOutcome::Refuse(Reply::message(status, message)),
        }
    }
}

/// Whether a `content-type` value names JSON: `application/json` or a
/// `+json` type such as `application/merge-patch+json`, any parameters.
fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use portcullis_plugin_kit::testing;
    use serde_json::{Value, json};

    use super::*;

    fn plugin(json: &str) -> Rewrite {
        testing::valid(json, Config::build)
    }

    fn body_plugin(extra: &str) -> Rewrite {
        plugin(&format!(
            r#"{{"body":{{"rename":{{"user.email":"mail"}},"remove":["user.password"],"nullify":["user.ssn"]{extra}}}}}"#
        ))
    }

    fn replaced(outcome: BodyOutcome) -> Value {
        match outcome {
            BodyOutcome::Replace(bytes) => serde_json::from_slice(&bytes).expect("JSON out"),
            other => panic!("expected a new body, got {other:?}"),
        }
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
            " application/vnd.api+json ;x=1",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/jsonx",
            "text/x+json",
            "",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
    }

    #[test]
    fn a_json_body_is_rewritten() {
        let p = body_plugin("");
        let body = br#"{"user":{"email":"a@b.c","password":"x","ssn":"1"},"n":1}"#.to_vec();
        let out = replaced(p.rewrite_body(Some("application/json"), Body::Complete(body)));
        assert_eq!(out, json!({"user":{"mail":"a@b.c","ssn":null},"n":1}));
    }

    #[test]
    fn a_body_no_rule_touches_is_left_byte_for_byte() {
        let p = body_plugin("");
        let body = b"{ \"other\" : [1, 2.50] }".to_vec();
        assert!(matches!(
            p.rewrite_body(Some("application/json"), Body::Complete(body)),
            BodyOutcome::Unchanged
        ));
        assert!(matches!(
            p.rewrite_body(Some("application/json"), Body::Complete(Vec::new())),
            BodyOutcome::Unchanged
        ));
    }

    #[test]
    fn unusable_bodies_pass_by_default() {
        let p = body_plugin("");
        for (ct, body) in [
            (Some("text/plain"), Body::Complete(b"user.email".to_vec())),
            (None, Body::Complete(b"{}".to_vec())),
            (
                Some("application/json"),
                Body::Complete(b"{not json".to_vec()),
            ),
            (Some("application/json"), Body::TooLarge),
        ] {
            assert!(
                matches!(p.rewrite_body(ct, body), BodyOutcome::Passed(_)),
                "{ct:?}"
            );
        }
    }

    #[test]
    fn unusable_bodies_can_be_refused() {
        let p = body_plugin(r#","on_too_large":"refuse","on_not_json":"refuse""#);
        for (ct, body, status) in [
            (Some("text/plain"), Body::Complete(b"x".to_vec()), 415),
            (
                Some("application/json"),
                Body::Complete(b"{not json".to_vec()),
                400,
            ),
            (Some("application/json"), Body::TooLarge, 413),
        ] {
            match p.rewrite_body(ct, body) {
                BodyOutcome::Refuse(reply) => {
                    assert_eq!(reply.status, status);
                    let message = testing::json_body(&reply);
                    assert!(message["message"].is_string());
                }
                other => panic!("{status}: expected a refusal, got {other:?}"),
            }
        }
    }
}
