//! The plugin's configuration and its validation.

use portcullis_plugin_kit::http::is_token_byte;
use serde::Deserialize;

use crate::pattern::{Pattern, is_param_name};
use crate::{Effect, Methods, Rbac, Rule};

/// The configuration of one route's `rbac` plugin.
///
/// ```toml
/// [[routes.plugins]]
/// name = "rbac"
/// config = { rules = [
///     { roles = ["admin"], paths = ["/**"] },
///     { roles = ["member"], methods = ["GET"], paths = ["/tenants/{tenant}/**"], require_tenant = "tenant" },
/// ] }
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The rules; at least one. Anything no allow rule matches is refused.
    #[serde(default)]
    rules: Vec<RuleConfig>,
    /// A `WWW-Authenticate` value for the `401` given to callers without an
    /// identity, e.g. `ApiKey realm="api"`; none by default.
    #[serde(default)]
    www_authenticate: Option<String>,
}

/// One rule.
///
/// ```toml
/// { effect = "allow", roles = ["member"], methods = ["GET", "HEAD"],
///   paths = ["/tenants/{tenant}/**"], require_tenant = "tenant" }
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// `allow` (the default) or `deny`; deny rules are checked first.
    #[serde(default)]
    effect: Effect,
    /// Roles the rule applies to (any one suffices); `*` is every caller
    /// with an identity.
    #[serde(default)]
    roles: Vec<String>,
    /// Whether the rule also applies to callers without an identity.
    #[serde(default)]
    anonymous: bool,
    /// Methods the rule applies to; `["*"]` (the default) is every method.
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    /// Path patterns the rule applies to (any one suffices); at least one.
    #[serde(default)]
    paths: Vec<String>,
    /// A `{param}` of every path pattern that must equal the caller's
    /// tenant (allow rules only).
    #[serde(default)]
    require_tenant: Option<String>,
}

fn default_methods() -> Vec<String> {
    vec!["*".to_owned()]
}

impl Config {
    /// Validates the configuration and compiles the rules. Reports every
    /// problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Rbac, String> {
        let mut problems = Vec::new();
        if self.rules.is_empty() {
            problems.push(
                "rules: at least one rule is required (with none, every request is refused)"
                    .to_owned(),
            );
        }
        if let Some(value) = &self.www_authenticate
            && (value.is_empty() || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
        {
            problems.push("www_authenticate: must be non-empty printable ASCII".to_owned());
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.into_iter().enumerate() {
            if let Some(rule) = rule.build(&format!("rules[{i}]"), &mut problems) {
                rules.push(rule);
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let (deny, allow) = rules.into_iter().partition(|r| r.effect == Effect::Deny);
        Ok(Rbac {
            deny,
            allow,
            www_authenticate: self.www_authenticate,
        })
    }
}

impl RuleConfig {
    /// Compiles one rule whose key is `key` (`rules[2]`), adding what is
    /// wrong with it to `problems`.
    fn build(self, key: &str, problems: &mut Vec<String>) -> Option<Rule> {
        let before = problems.len();

        if self.roles.is_empty() && !self.anonymous {
            problems.push(format!(
                "{key}.roles: at least one role is required (`*` is every caller with an identity; `anonymous = true` adds callers without one)"
            ));
        }
        let mut any_role = false;
        for (j, role) in self.roles.iter().enumerate() {
            if role == "*" {
                any_role = true;
            } else if role.is_empty() || role.trim() != role {
                problems.push(format!(
                    "{key}.roles[{j}]: must not be empty or start or end with whitespace"
                ));
            }
        }

        let methods = build_methods(key, &self.methods, problems);

        if self.paths.is_empty() {
            problems.push(format!(
                "{key}.paths: at least one path pattern is required"
            ));
        }
        let mut patterns = Vec::with_capacity(self.paths.len());
        for (j, text) in self.paths.iter().enumerate() {
            match Pattern::parse(text) {
                Ok(pattern) => patterns.push(pattern),
                Err(e) => problems.push(format!("{key}.paths[{j}]: {e}")),
            }
        }

        let tenant_param = match &self.require_tenant {
            None => None,
            Some(_) if self.effect == Effect::Deny => {
                problems.push(format!(
                    "{key}.require_tenant: only allow rules can require a tenant (default deny already refuses other tenants)"
                ));
                None
            }
            Some(name) if !is_param_name(name) => {
                problems.push(format!(
                    "{key}.require_tenant: `{name}` is not a parameter name (write `tenant` for `{{tenant}}`)"
                ));
                None
            }
            Some(name) => {
                let mut indexes = Vec::with_capacity(patterns.len());
                for (j, pattern) in patterns.iter().enumerate() {
                    match pattern.param_index(name) {
                        Some(index) => indexes.push(index),
                        None => problems.push(format!(
                            "{key}.require_tenant: `{}` (paths[{j}]) has no `{{{name}}}`",
                            self.paths.get(j).map_or("", String::as_str)
                        )),
                    }
                }
                Some(indexes)
            }
        };

        (problems.len() == before).then(|| Rule {
            effect: self.effect,
            roles: self.roles.into_iter().filter(|r| r != "*").collect(),
            any_role,
            anonymous: self.anonymous,
            methods,
            paths: patterns,
            tenant_param,
        })
    }
}

/// The methods of a rule, upper-cased, or what is wrong with them.
fn build_methods(key: &str, methods: &[String], problems: &mut Vec<String>) -> Methods {
    if methods.is_empty() {
        problems.push(format!(
            "{key}.methods: at least one method is required (`[\"*\"]` is every method)"
        ));
    }
    if methods.iter().any(|m| m == "*") {
        if methods.len() > 1 {
            problems.push(format!(
                "{key}.methods: `*` already means every method; list it alone"
            ));
        }
        return Methods::Any;
    }
    let mut list = Vec::with_capacity(methods.len());
    for (j, method) in methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            problems.push(format!(
                "{key}.methods[{j}]: `{method}` is not an HTTP method"
            ));
        } else {
            list.push(method.to_ascii_uppercase());
        }
    }
    Methods::List(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    portcullis_plugin_kit::config_test_helpers!(Config => Rbac);

    #[test]
    fn defaults_apply_and_rules_are_split_by_effect() {
        let rbac = build(
            r#"{"rules":[
                {"roles":["admin"],"paths":["/**"]},
                {"effect":"deny","roles":["*"],"methods":["delete"],"paths":["/audit/**"]}
            ]}"#,
        )
        .expect("valid");
        assert_eq!(rbac.allow.len(), 1);
        assert_eq!(rbac.deny.len(), 1);
        let allow = &rbac.allow[0];
        assert_eq!(allow.methods, Methods::Any, "every method by default");
        assert_eq!(allow.roles, ["admin"]);
        assert!(!allow.any_role && !allow.anonymous);
        assert_eq!(allow.tenant_param, None);
        let deny = &rbac.deny[0];
        assert_eq!(deny.methods, Methods::List(vec!["DELETE".into()]));
        assert!(deny.any_role);
        assert!(deny.roles.is_empty(), "`*` is kept as a flag, not a role");
        assert_eq!(rbac.www_authenticate, None);
    }

    #[test]
    fn require_tenant_finds_the_parameter_in_every_path() {
        let rbac = build(
            r#"{"www_authenticate":"ApiKey realm=\"api\"","rules":[{"roles":["member"],
                "paths":["/tenants/{tenant}/**","/t/{x}/{tenant}"],"require_tenant":"tenant"}]}"#,
        )
        .expect("valid");
        assert_eq!(rbac.allow[0].tenant_param, Some(vec![1, 2]));
        assert_eq!(
            rbac.www_authenticate.as_deref(),
            Some(r#"ApiKey realm="api""#)
        );
    }

    #[test]
    fn an_anonymous_rule_needs_no_roles() {
        let rbac = build(r#"{"rules":[{"anonymous":true,"paths":["/health"]}]}"#).expect("valid");
        assert!(rbac.allow[0].anonymous);
        assert!(rbac.allow[0].roles.is_empty() && !rbac.allow[0].any_role);
    }

    #[test]
    fn bad_rules_are_reported_with_their_key_path() {
        let cases = [
            (r#"{"paths":["/"]}"#, "rules[0].roles: at least one role"),
            (
                r#"{"roles":[""],"paths":["/"]}"#,
                "rules[0].roles[0]: must not be empty",
            ),
            (
                r#"{"roles":["a"," b"],"paths":["/"]}"#,
                "rules[0].roles[1]: must not be empty",
            ),
            (
                r#"{"roles":["a"]}"#,
                "rules[0].paths: at least one path pattern",
            ),
            (
                r#"{"roles":["a"],"paths":["/ok","x"]}"#,
                "rules[0].paths[1]: `x` must start with `/`",
            ),
            (
                r#"{"roles":["a"],"paths":["/**/x"]}"#,
                "rules[0].paths[0]: `/**/x`: `**` may only be the last segment",
            ),
            (
                r#"{"roles":["a"],"methods":[],"paths":["/"]}"#,
                "rules[0].methods: at least one method",
            ),
            (
                r#"{"roles":["a"],"methods":["GET","*"],"paths":["/"]}"#,
                "rules[0].methods: `*` already means every method",
            ),
            (
                r#"{"roles":["a"],"methods":["GET","BAD METHOD"],"paths":["/"]}"#,
                "rules[0].methods[1]: `BAD METHOD` is not an HTTP method",
            ),
            (
                r#"{"roles":["a"],"paths":["/t/{tenant}","/other"],"require_tenant":"tenant"}"#,
                "rules[0].require_tenant: `/other` (paths[1]) has no `{tenant}`",
            ),
            (
                r#"{"roles":["a"],"paths":["/t/{t}"],"require_tenant":"{t}"}"#,
                "rules[0].require_tenant: `{t}` is not a parameter name",
            ),
            (
                r#"{"effect":"deny","roles":["a"],"paths":["/t/{t}"],"require_tenant":"t"}"#,
                "rules[0].require_tenant: only allow rules",
            ),
        ];
        for (rule, expected) in cases {
            let message = problems(&format!(r#"{{"rules":[{rule}]}}"#));
            assert!(message.starts_with(expected), "{rule}: {message}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let message = problems(
            r#"{"www_authenticate":"a\nb","rules":[{"roles":["a"],"paths":["/"]},{"roles":[],"paths":["nope"]}]}"#,
        );
        assert_eq!(
            message,
            "www_authenticate: must be non-empty printable ASCII; \
             rules[1].roles: at least one role is required (`*` is every caller with an identity; `anonymous = true` adds callers without one); \
             rules[1].paths[0]: `nope` must start with `/`"
        );
        assert!(problems(r#"{}"#).starts_with("rules: at least one rule is required"));
    }

    #[test]
    fn unknown_fields_and_effects_are_rejected() {
        let err = problems(r#"{"rules":[],"rule":[]}"#);
        assert!(err.starts_with("unknown field `rule`"), "{err}");
        let err = problems(r#"{"rules":[{"roles":["a"],"path":["/"]}]}"#);
        assert!(err.starts_with("unknown field `path`"), "{err}");
        let err = problems(r#"{"rules":[{"effect":"block"}]}"#);
        assert!(err.starts_with("unknown variant `block`"), "{err}");
    }
}
