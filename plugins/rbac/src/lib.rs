//! `rbac`: a Portcullis policy plugin that authorizes requests by role, with
//! default deny and tenant isolation. See the README for the configuration.
//!
//! It reads the identity (consumer, roles, tenant) that an authentication
//! plugin placed before it attached to the request, and checks the method
//! and path against its rules:
//!
//! 1. A path that the upstream could read differently (`..`, `//`, `%2F`,
//!    `\`, bad escapes) is answered with `400`.
//! 2. If a `deny` rule matches, the request is refused.
//! 3. If an `allow` rule matches, the request goes on unchanged.
//! 4. Otherwise it is refused.
//!
//! Refused means `401` for a caller without an identity (it may still
//! authenticate; like Kong's ACL plugin) and `403` for one with an identity.
//! The bodies never say which roles or rules would have allowed the request.

use portcullis_sdk::{Action, Identity, Policy, Reply, Request, policy};
use serde::Deserialize;

mod config;
mod path;
mod pattern;

use config::Config;
use path::PathError;
use pattern::Pattern;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Effect {
    /// The request goes on.
    #[default]
    Allow,
    /// The request is refused, whatever the allow rules say.
    Deny,
}

/// The methods a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Methods {
    /// Every method.
    Any,
    /// These methods, upper-case.
    List(Vec<String>),
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    /// Allow or deny.
    effect: Effect,
    /// The roles it applies to (without `*`).
    roles: Vec<String>,
    /// Whether it applies to every caller with an identity (`*`).
    any_role: bool,
    /// Whether it applies to callers without an identity.
    anonymous: bool,
    /// The methods it applies to.
    methods: Methods,
    /// The path patterns it applies to.
    paths: Vec<Pattern>,
    /// With `require_tenant`: for each of `paths`, the index of the path
    /// segment that must equal the caller's tenant.
    tenant_param: Option<Vec<usize>>,
}

impl Rule {
    /// Whether the rule applies to a request of `method` (upper-case) to the
    /// decoded `path` segments from the caller `identity`.
    fn matches(&self, method: &str, path: &[String], identity: Option<&Identity>) -> bool {
        let caller = match identity {
            None => self.anonymous,
            Some(identity) => {
                self.any_role || identity.roles.iter().any(|role| self.roles.contains(role))
            }
        };
        let method = match &self.methods {
            Methods::Any => true,
            Methods::List(methods) => methods.iter().any(|m| m == method),
        };
        caller
            && method
            && self
                .paths
                .iter()
                .enumerate()
                .any(|(j, pattern)| pattern.matches(path) && self.tenant_matches(j, path, identity))
    }

    /// Whether the `require_tenant` condition of `paths[j]` holds (always,
    /// without `require_tenant`). A caller without a tenant never passes.
    fn tenant_matches(&self, j: usize, path: &[String], identity: Option<&Identity>) -> bool {
        let Some(indexes) = &self.tenant_param else {
            return true;
        };
        let tenant = identity.and_then(|identity| identity.tenant.as_deref());
        match (tenant, indexes.get(j).and_then(|&i| path.get(i))) {
            (Some(tenant), Some(segment)) => tenant == segment,
            _ => false,
        }
    }
}

/// One route's `rbac`, built from a validated [`Config`].
#[derive(Debug)]
struct Rbac {
    /// The deny rules, checked first.
    deny: Vec<Rule>,
    /// The allow rules.
    allow: Vec<Rule>,
    /// The `WWW-Authenticate` value of a 401, if configured.
    www_authenticate: Option<String>,
}

/// What the plugin decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// An allow rule matched and no deny rule did.
    Allow,
    /// Refused, and the caller has no identity: 401.
    Unauthenticated,
    /// Refused, and the caller has an identity: 403.
    Forbidden,
    /// The path is ambiguous: 400.
    BadPath(PathError),
}

#[policy]
impl Policy for Rbac {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        config.build()
    }

    fn on_request(&self, req: &Request) -> Action {
        let identity = req.identity();
        let method = req.method();
        let path = req.path();
        let decision = self.decide(&method, &path, identity.as_ref());
        let reason = match decision {
            Decision::Allow => None,
            Decision::Unauthenticated => {
                Some("no identity, and no rule admits anonymous callers".to_owned())
            }
            Decision::Forbidden => Some("a deny rule matches, or no allow rule does".to_owned()),
            Decision::BadPath(e) => Some(e.to_string()),
        };
        if let Some(reason) = reason {
            let consumer = identity.as_ref().map_or("-", |i| i.consumer.as_str());
            portcullis_sdk::debug!("refused {method} {path} of consumer `{consumer}`: {reason}");
        }
        self.respond(decision)
    }
}

impl Rbac {
    /// The decision for a request of `method` to `path` (without the query)
    /// from the caller `identity`, if any.
    fn decide(&self, method: &str, path: &str, identity: Option<&Identity>) -> Decision {
        let segments = match path::segments(path) {
            Ok(segments) => segments,
            Err(e) => return Decision::BadPath(e),
        };
        let method = method.to_ascii_uppercase();
        let refused = if identity.is_some() {
            Decision::Forbidden
        } else {
            Decision::Unauthenticated
        };
        if self
            .deny
            .iter()
            .any(|rule| rule.matches(&method, &segments, identity))
        {
            return refused;
        }
        if self
            .allow
            .iter()
            .any(|rule| rule.matches(&method, &segments, identity))
        {
            return Decision::Allow;
        }
        refused
    }

    /// The action for a decision.
    fn respond(&self, decision: Decision) -> Action {
        match decision {
            Decision::Allow => Action::next(),
            // RFC 9110 §15.5.2: a 401 MUST carry a challenge; without one
            // configured there is no scheme to offer, so the refusal is a
            // 403 with the same message.
            Decision::Unauthenticated => match &self.www_authenticate {
                Some(challenge) => {
                    Reply::unauthorized(challenge.as_str(), "authentication required").into()
                }
                None => Reply::message(403, "authentication required").into(),
            },
            Decision::Forbidden => Reply::message(403, "forbidden").into(),
            Decision::BadPath(_) => Reply::message(400, "invalid request path").into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_plugin_kit::testing;

    use super::*;

    fn rbac(rules: &str) -> Rbac {
        testing::valid(&format!(r#"{{"rules":{rules}}}"#), Config::build)
    }

    fn alice() -> Identity {
        Identity::new("alice").roles(["admin"]).tenant("acme")
    }

    fn member(tenant: Option<&str>) -> Identity {
        let identity = Identity::new("mallory").roles(["member", "viewer"]);
        match tenant {
            Some(tenant) => identity.tenant(tenant),
            None => identity,
        }
    }

    const TENANT_RULES: &str = r#"[
        {"roles":["admin"],"paths":["/**"]},
        {"roles":["member"],"methods":["GET","POST"],"paths":["/tenants/{tenant}/**"],"require_tenant":"tenant"},
        {"roles":["*"],"methods":["GET"],"paths":["/me","/docs/*"]},
        {"anonymous":true,"methods":["GET"],"paths":["/health"]}
    ]"#;

    #[test]
    fn roles_grant_what_their_rules_list_and_nothing_else() {
        let rbac = rbac(TENANT_RULES);
        let m = member(Some("acme"));
        assert_eq!(
            rbac.decide("DELETE", "/anything/at/all", Some(&alice())),
            Decision::Allow
        );
        assert_eq!(rbac.decide("GET", "/", Some(&alice())), Decision::Allow);
        assert_eq!(rbac.decide("GET", "/admin", Some(&m)), Decision::Forbidden);
        assert_eq!(rbac.decide("GET", "/me", Some(&m)), Decision::Allow);
        assert_eq!(rbac.decide("GET", "/docs/intro", Some(&m)), Decision::Allow);
        assert_eq!(
            rbac.decide("GET", "/docs/a/b", Some(&m)),
            Decision::Forbidden
        );
        assert_eq!(rbac.decide("POST", "/me", Some(&m)), Decision::Forbidden);
        let nobody = Identity::new("nobody");
        assert_eq!(
            rbac.decide("GET", "/me", Some(&nobody)),
            Decision::Allow,
            "`*` is any identity"
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/acme", Some(&nobody)),
            Decision::Forbidden
        );
    }

    #[test]
    fn methods_are_compared_case_insensitively() {
        let rbac = rbac(TENANT_RULES);
        let m = member(Some("acme"));
        assert_eq!(rbac.decide("get", "/me", Some(&m)), Decision::Allow);
        assert_eq!(
            rbac.decide("Post", "/tenants/acme/x", Some(&m)),
            Decision::Allow
        );
        assert_eq!(
            rbac.decide("delete", "/tenants/acme/x", Some(&m)),
            Decision::Forbidden
        );
    }

    #[test]
    fn tenants_see_only_their_own_paths() {
        let rbac = rbac(TENANT_RULES);
        let acme = member(Some("acme"));
        assert_eq!(
            rbac.decide("GET", "/tenants/acme", Some(&acme)),
            Decision::Allow
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/acme/orders/7", Some(&acme)),
            Decision::Allow
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/%61cme/orders", Some(&acme)),
            Decision::Allow
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/globex/orders", Some(&acme)),
            Decision::Forbidden
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/ACME/orders", Some(&acme)),
            Decision::Forbidden
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/acmex", Some(&acme)),
            Decision::Forbidden
        );
        let homeless = member(None);
        assert_eq!(
            rbac.decide("GET", "/tenants/acme/orders", Some(&homeless)),
            Decision::Forbidden,
            "a caller without a tenant never matches"
        );
        let empty = member(Some(""));
        assert_eq!(
            rbac.decide("GET", "/tenants//orders", Some(&empty)),
            Decision::BadPath(PathError::EmptySegment)
        );
    }

    #[test]
    fn the_tenant_parameter_is_located_per_pattern() {
        let rbac = rbac(
            r#"[{"roles":["member"],"paths":["/tenants/{tenant}/**","/reports/{year}/{tenant}"],"require_tenant":"tenant"}]"#,
        );
        let acme = member(Some("acme"));
        assert_eq!(
            rbac.decide("GET", "/reports/2025/acme", Some(&acme)),
            Decision::Allow
        );
        assert_eq!(
            rbac.decide("GET", "/reports/acme/2025", Some(&acme)),
            Decision::Forbidden
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/acme/reports", Some(&acme)),
            Decision::Allow
        );
    }

    #[test]
    fn callers_without_an_identity_get_401_unless_a_rule_lets_them_in() {
        let rbac = rbac(TENANT_RULES);
        assert_eq!(rbac.decide("GET", "/health", None), Decision::Allow);
        assert_eq!(
            rbac.decide("POST", "/health", None),
            Decision::Unauthenticated
        );
        assert_eq!(
            rbac.decide("GET", "/me", None),
            Decision::Unauthenticated,
            "`*` needs an identity"
        );
        assert_eq!(
            rbac.decide("GET", "/tenants/acme", None),
            Decision::Unauthenticated
        );
        let m = member(Some("acme"));
        assert_eq!(
            rbac.decide("GET", "/health", Some(&m)),
            Decision::Forbidden,
            "`anonymous` alone does not admit callers with an identity"
        );
    }

    #[test]
    fn deny_rules_win_over_allow_rules() {
        let rbac = rbac(
            r#"[
                {"roles":["admin"],"paths":["/**"]},
                {"effect":"deny","roles":["*"],"methods":["DELETE"],"paths":["/audit/**"]},
                {"effect":"deny","anonymous":true,"roles":["intern"],"paths":["/public/secret"]},
                {"anonymous":true,"roles":["intern"],"paths":["/public/**"]}
            ]"#,
        );
        let admin = alice();
        assert_eq!(
            rbac.decide("GET", "/audit/log", Some(&admin)),
            Decision::Allow
        );
        assert_eq!(
            rbac.decide("DELETE", "/audit/log", Some(&admin)),
            Decision::Forbidden
        );
        assert_eq!(
            rbac.decide("delete", "/audit", Some(&admin)),
            Decision::Forbidden
        );
        assert_eq!(
            rbac.decide("DELETE", "/%61udit/log", Some(&admin)),
            Decision::Forbidden,
            "no escape by encoding"
        );
        assert_eq!(
            rbac.decide("DELETE", "/audit/log/", Some(&admin)),
            Decision::Forbidden,
            "no escape by a trailing slash"
        );
        assert_eq!(
            rbac.decide("DELETE", "/other", Some(&admin)),
            Decision::Allow
        );
        let intern = Identity::new("ivan").roles(["intern"]);
        assert_eq!(
            rbac.decide("GET", "/public/page", Some(&intern)),
            Decision::Allow
        );
        assert_eq!(rbac.decide("GET", "/public/page", None), Decision::Allow);
        assert_eq!(
            rbac.decide("GET", "/public/secret", Some(&intern)),
            Decision::Forbidden
        );
        assert_eq!(
            rbac.decide("GET", "/public/secret", None),
            Decision::Unauthenticated
        );
    }

    #[test]
    fn ambiguous_paths_cannot_escape_a_pattern() {
        let rbac = rbac(TENANT_RULES);
        let acme = member(Some("acme"));
        for path in [
            "/tenants/acme/../globex/orders",
            "/tenants/acme/%2e%2e/globex/orders",
            "/tenants/acme%2F..%2Fglobex/orders",
            "/tenants/acme/..%2Fglobex",
            "/tenants/acme\\..\\globex",
            "/tenants/acme/..;/globex",
            "/tenants//acme/orders",
            "/tenants/acme/./orders",
            "/tenants/acme/%zz",
        ] {
            assert!(
                matches!(rbac.decide("GET", path, Some(&acme)), Decision::BadPath(_)),
                "{path}"
            );
        }
    }

    /// The status, JSON body and headers of the reply `action`.
    fn body(action: Action) -> (u16, serde_json::Value, Vec<(String, String)>) {
        let reply = testing::replied(action);
        (reply.status, testing::json_body(&reply), reply.headers)
    }

    #[test]
    fn refusals_are_json_and_name_nothing() {
        let plain = rbac(TENANT_RULES);
        assert_eq!(plain.respond(Decision::Allow), Action::next());

        let (status, json, headers) = body(plain.respond(Decision::Forbidden));
        assert_eq!(status, 403);
        assert_eq!(json, serde_json::json!({ "message": "forbidden" }));
        assert_eq!(
            headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );

        // No challenge to offer: not a 401 (RFC 9110 §15.5.2), a 403.
        let (status, json, headers) = body(plain.respond(Decision::Unauthenticated));
        assert_eq!(status, 403);
        assert_eq!(
            json,
            serde_json::json!({ "message": "authentication required" })
        );
        assert!(!headers.iter().any(|(n, _)| n == "www-authenticate"));

        let (status, json, _) = body(plain.respond(Decision::BadPath(PathError::DotSegment)));
        assert_eq!(status, 400);
        assert_eq!(
            json,
            serde_json::json!({ "message": "invalid request path" })
        );

        let challenged = testing::valid(
            r#"{"www_authenticate":"ApiKey realm=\"api\"","rules":[{"roles":["a"],"paths":["/"]}]}"#,
            Config::build,
        );
        let (status, _, headers) = body(challenged.respond(Decision::Unauthenticated));
        assert_eq!(status, 401);
        assert!(headers.contains(&(
            "www-authenticate".to_owned(),
            r#"ApiKey realm="api""#.to_owned()
        )));
        let (_, _, headers) = body(challenged.respond(Decision::Forbidden));
        assert!(
            !headers.iter().any(|(n, _)| n == "www-authenticate"),
            "403 has no challenge"
        );
    }
}
