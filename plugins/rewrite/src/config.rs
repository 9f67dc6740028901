//! The plugin's configuration and its validation.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_plugin_kit::http::is_token_byte;
use portcullis_plugin_kit::path::{JsonPath, Segment};
use portcullis_plugin_kit::template;
use serde::Deserialize;
use serde_json::Value;

use crate::Rewrite;
use crate::body::{BodyRules, OnProblem};
use crate::headers::HeaderRules;
use crate::uri::{PathRule, QueryRules};

/// The configuration of one route's `rewrite` plugin. Every part is
/// optional; see the README for the meaning of each key.
///
/// ```toml
/// [routes.plugins.config]
/// method = "POST"
/// host = "users.internal"
/// path = [{ regex = '^/v1/users/(\d+)$', replace = "/users/$1" }, { strip_prefix = "/v1" }]
/// query = { rename = { q = "search" }, map = { sort = { asc = "ascending" } } }
/// request_headers = { set = { x-env = "prod" }, remove = ["x-debug"] }
/// response_headers = { rename = { x-internal-id = "x-request-id" } }
/// body = { rename = { "user.email" = "mail" }, remove = ["user.password"] }
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Path rules; the first that matches rewrites the path.
    #[serde(default)]
    path: Vec<PathRuleConfig>,
    /// A new method for every request.
    #[serde(default)]
    method: Option<String>,
    /// A new `Host` header for every request.
    #[serde(default)]
    host: Option<String>,
    /// Query parameter rules.
    #[serde(default)]
    query: QueryConfig,
    /// Header rules for the request.
    #[serde(default)]
    request_headers: HeaderConfig,
    /// Header rules for the response.
    #[serde(default)]
    response_headers: HeaderConfig,
    /// JSON request body rules.
    #[serde(default)]
    body: BodyConfig,
}

/// One path rule: `{ strip_prefix = "/api" }`, `{ prefix = "/v1", replace =
/// "/v2" }` or `{ regex = '^/v1/(.*)$', replace = "/$1" }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathRuleConfig {
    #[serde(default)]
    strip_prefix: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    replace: Option<String>,
}

/// `query = { map = { sort = { asc = "ascending" } }, rename = { sort = "order" }, remove = ["debug"], set = { v = "2" } }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryConfig {
    #[serde(default)]
    map: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
}

/// `request_headers = { rename = { x-old = "x-new" }, remove = ["x-debug"], set = { x-env = "prod" }, add = { via = "portcullis" } }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
}

/// `body = { rename = { "user.email" = "mail" }, remove = ["user.password"], nullify = ["user.ssn"], set = { "meta.via" = "gateway" } }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyConfig {
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    nullify: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, Value>,
    #[serde(default)]
    on_too_large: OnProblem,
    #[serde(default)]
    on_not_json: OnProblem,
}

/// Headers whose framing role belongs to the gateway.
const FRAMING_HEADERS: [&str; 2] = ["content-length", "transfer-encoding"];

impl Config {
    /// Validates the configuration and builds the plugin. Reports every
    /// problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Rewrite, String> {
        let mut problems = Vec::new();

        let path_rules = self
            .path
            .into_iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                rule.build(&format!("path[{i}]"))
                    .map_err(|e| problems.push(e))
                    .ok()
            })
            .collect();

        if let Some(method) = &self.method
            && (method.is_empty() || !method.bytes().all(is_token_byte))
        {
            problems.push(format!("method: `{method}` is not a valid method"));
        }
        if let Some(host) = &self.host
            && (host.is_empty()
                || host
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "/?#@\\".contains(c)))
        {
            problems.push(format!(
                "host: `{host}` is not a valid host (a name or address with an optional `:port`)"
            ));
        }

        let query = self.query.build(&mut problems);
        let request_headers = self.request_headers.build("request_headers", &mut problems);
        let response_headers = self
            .response_headers
            .build("response_headers", &mut problems);
        if self.host.is_some() && request_headers.set.contains_key("host") {
            problems
                .push("host, request_headers.set: both set the `host` header; keep one".to_owned());
        }
        let body = self.body.build(&mut problems);

        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Rewrite {
            path_rules,
            method: self.method,
            host: self.host,
            query,
            request_headers,
            response_headers,
            body,
        })
    }
}

impl PathRuleConfig {
    fn build(self, key: &str) -> Result<PathRule, String> {
        let starts_with_slash = |what: &str, value: &str| {
            if !value.starts_with('/') {
                Err(format!("{key}.{what}: `{value}` must start with `/`"))
            } else if value.contains(['?', '#']) {
                Err(format!(
                    "{key}.{what}: `{value}` must not contain `?` or `#` (query parameters are set with `query.set`)"
                ))
            } else {
                Ok(())
            }
        };
        match (self.strip_prefix, self.prefix, self.regex, self.replace) {
            (Some(prefix), None, None, None) => {
                starts_with_slash("strip_prefix", &prefix)?;
                Ok(PathRule::StripPrefix(prefix))
            }
            (None, Some(prefix), None, Some(with)) => {
                starts_with_slash("prefix", &prefix)?;
                starts_with_slash("replace", &with)?;
                Ok(PathRule::ReplacePrefix { prefix, with })
            }
            (None, None, Some(regex), Some(replace)) => {
                if replace.contains(['?', '#']) {
                    return Err(format!(
                        "{key}.replace: `{replace}` must not contain `?` or `#` (query parameters are set with `query.set`)"
                    ));
                }
                let regex =
                    template::compile_regex(&regex).map_err(|e| format!("{key}.regex: {e}"))?;
                template::check(&regex, &replace).map_err(|e| format!("{key}.replace: {e}"))?;
                Ok(PathRule::Regex { regex, replace })
            }
            _ => Err(format!(
                "{key}: a rule is `{{ strip_prefix = \"/api\" }}`, `{{ prefix = \"/v1\", replace = \"/v2\" }}` or `{{ regex = '^/v1/(.*)$', replace = \"/$1\" }}`"
            )),
        }
    }
}

impl QueryConfig {
    fn build(self, problems: &mut Vec<String>) -> QueryRules {
        for (name, values) in &self.map {
            if name.is_empty() {
                problems.push("query.map: a parameter name is empty".to_owned());
            }
            if values.is_empty() {
                problems.push(format!("query.map.{name}: maps no value"));
            }
        }
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (old, new) in &self.rename {
            if old.is_empty() || new.is_empty() {
                problems.push(format!(
                    "query.rename: `{old}` = `{new}`: names must not be empty"
                ));
            } else if old == new {
                problems.push(format!(
                    "query.rename.{old}: renames the parameter to itself"
                ));
            } else if let Some(first) = targets.insert(new, old) {
                problems.push(format!(
                    "query.rename: `{first}` and `{old}` are both renamed to `{new}`"
                ));
            }
        }
        let mut remove = BTreeSet::new();
        for (i, name) in self.remove.into_iter().enumerate() {
            if name.is_empty() {
                problems.push(format!("query.remove[{i}]: must not be empty"));
            }
            remove.insert(name);
        }
        for name in self.set.keys() {
            if name.is_empty() {
                problems.push("query.set: a parameter name is empty".to_owned());
            }
            if remove.contains(name) {
                problems.push(format!(
                    "query.set.{name}: the parameter is also in `query.remove`"
                ));
            }
        }
        QueryRules {
            map: self.map,
            rename: self.rename,
            remove,
            set: self.set,
        }
    }
}

impl HeaderConfig {
    fn build(self, key: &str, problems: &mut Vec<String>) -> HeaderRules {
        let mut name = |what: &str, name: &str| -> String {
            let lower = name.to_ascii_lowercase();
            if lower.is_empty() || !lower.bytes().all(is_token_byte) {
                problems.push(format!("{key}.{what}: `{name}` is not a valid header name"));
            } else if FRAMING_HEADERS.contains(&lower.as_str()) {
                problems.push(format!(
                    "{key}.{what}: `{name}` is set by the gateway to frame the body and cannot be changed"
                ));
            }
            lower
        };
        let mut rename = BTreeMap::new();
        for (old, new) in self.rename {
            let (old, new) = (name("rename", &old), name("rename", &new));
            rename.insert(old, new);
        }
        let remove = self
            .remove
            .iter()
            .map(|n| name("remove", n))
            .collect::<BTreeSet<_>>();
        let mut values = |what: &str, list: BTreeMap<String, String>| {
            list.into_iter()
                .map(|(n, v)| (name(what, &n), v))
                .collect::<BTreeMap<_, _>>()
        };
        let set = values("set", self.set);
        let add = values("add", self.add);
        for (what, list) in [("set", &set), ("add", &add)] {
            for (n, v) in list {
                if v.chars().any(|c| c.is_control() && c != '\t') {
                    problems.push(format!(
                        "{key}.{what}.{n}: the value must not contain control characters"
                    ));
                }
            }
        }
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (old, new) in &rename {
            if old == new {
                problems.push(format!("{key}.rename.{old}: renames the header to itself"));
            } else if let Some(first) = targets.insert(new, old) {
                problems.push(format!(
                    "{key}.rename: `{first}` and `{old}` are both renamed to `{new}`"
                ));
            }
        }
        for n in set.keys() {
            if remove.contains(n) {
                problems.push(format!(
                    "{key}.set.{n}: the header is also in `{key}.remove`"
                ));
            }
        }
        HeaderRules {
            rename,
            remove,
            set,
            add,
        }
    }
}

impl BodyConfig {
    fn build(self, problems: &mut Vec<String>) -> BodyRules {
        let mut parse = |what: String, text: &str| match JsonPath::parse(text) {
            Ok(path) => Some(path),
            Err(e) => {
                problems.push(format!("{what}: {e}"));
                None
            }
        };
        let mut rename = Vec::new();
        let mut bad_targets = Vec::new();
        for (from, to) in self.rename {
            let Some(path) = parse(format!("body.rename.\"{from}\""), &from) else {
                continue;
            };
            if !matches!(path.segments().last(), Some(Segment::Key(_))) {
                bad_targets.push(format!(
                    "body.rename.\"{from}\": the path must end with a key (not an index or `*`)"
                ));
            } else if to.is_empty() {
                bad_targets.push(format!(
                    "body.rename.\"{from}\": the new key must not be empty"
                ));
            } else {
                rename.push((path, to));
            }
        }
        let remove = self
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, p)| parse(format!("body.remove[{i}]"), p))
            .collect();
        let nullify = self
            .nullify
            .iter()
            .enumerate()
            .filter_map(|(i, p)| parse(format!("body.nullify[{i}]"), p))
            .collect();
        let set = self
            .set
            .into_iter()
            .filter_map(|(p, value)| {
                parse(format!("body.set.\"{p}\""), &p).map(|path| (path, value))
            })
            .collect();
        problems.extend(bad_targets);
        BodyRules {
            rename,
            remove,
            nullify,
            set,
            on_too_large: self.on_too_large,
            on_not_json: self.on_not_json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    portcullis_plugin_kit::config_test_helpers!(Config => Rewrite);

    #[test]
    fn an_empty_config_does_nothing() {
        let rewrite = build("{}").expect("valid");
        assert!(rewrite.path_rules.is_empty() && rewrite.method.is_none());
        assert!(rewrite.query.is_empty() && rewrite.body.is_empty());
        assert!(rewrite.request_headers.is_empty() && rewrite.response_headers.is_empty());
    }

    #[test]
    fn every_part_is_read() {
        let rewrite = build(
            r#"{
                "path": [{"regex": "^/v1/users/(\\d+)$", "replace": "/users/$1"}, {"strip_prefix": "/v1"},
                         {"prefix": "/old", "replace": "/new"}],
                "method": "PATCH", "host": "users.internal:8080",
                "query": {"map": {"sort": {"asc": "ascending"}}, "rename": {"sort": "order"},
                          "remove": ["debug"], "set": {"v": "2"}},
                "request_headers": {"rename": {"X-Old": "X-New"}, "remove": ["X-Debug"],
                                    "set": {"X-Env": "prod"}, "add": {"Via": "portcullis"}},
                "response_headers": {"remove": ["server"]},
                "body": {"rename": {"user.email": "mail"}, "remove": ["user.password"],
                         "nullify": ["user.ssn"], "set": {"meta.via": "gateway", "meta.n": 1},
                         "on_too_large": "refuse", "on_not_json": "refuse"}
            }"#,
        )
        .expect("valid");
        assert_eq!(rewrite.path_rules.len(), 3);
        assert_eq!(rewrite.method.as_deref(), Some("PATCH"));
        assert_eq!(rewrite.host.as_deref(), Some("users.internal:8080"));
        assert_eq!(rewrite.query.rename["sort"], "order");
        assert_eq!(rewrite.request_headers.rename["x-old"], "x-new");
        assert!(rewrite.request_headers.remove.contains("x-debug"));
        assert_eq!(rewrite.request_headers.set["x-env"], "prod");
        assert_eq!(rewrite.request_headers.add["via"], "portcullis");
        assert!(rewrite.response_headers.remove.contains("server"));
        assert_eq!(rewrite.body.rename.len(), 1);
        assert_eq!(rewrite.body.set.len(), 2);
        assert_eq!(rewrite.body.on_too_large, OnProblem::Refuse);
        assert_eq!(rewrite.body.on_not_json, OnProblem::Refuse);
    }

    #[test]
    fn bad_path_rules_name_their_index() {
        for (rule, expected) in [
            (
                r#"{"strip_prefix":"api"}"#,
                "path[0].strip_prefix: `api` must start with `/`",
            ),
            (
                r#"{"prefix":"/v1","replace":"v2"}"#,
                "path[0].replace: `v2` must start with `/`",
            ),
            (r#"{"prefix":"/v1"}"#, "path[0]: a rule is"),
            (
                r#"{"prefix":"/v1","replace":"/v2?x=1"}"#,
                "path[0].replace: `/v2?x=1` must not contain `?`",
            ),
            (
                r#"{"regex":"^/(.*)$","replace":"/a#$1"}"#,
                "path[0].replace: `/a#$1` must not contain `?`",
            ),
            (
                r#"{"strip_prefix":"/a","regex":"x","replace":"/"}"#,
                "path[0]: a rule is",
            ),
            (
                r#"{"regex":"(","replace":"/"}"#,
                "path[0].regex: invalid regex: ",
            ),
            (
                r#"{"regex":"^/u/(\\d+)$","replace":"/users/$1x"}"#,
                "path[0].replace: `$1x` refers to no capture group",
            ),
        ] {
            let message = problems(&format!(r#"{{"path":[{rule}]}}"#));
            assert!(message.starts_with(expected), "{rule}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn bad_values_are_reported_together() {
        let message = problems(
            r#"{"method":"GE T","host":"a/b",
                "query":{"rename":{"a":"c","b":"c"},"remove":["x"],"set":{"x":"1"}},
                "request_headers":{"set":{"bad name":"1","x-ok":"a\nb"},"remove":["content-length"]},
                "response_headers":{"rename":{"x-a":"x-a"}},
                "body":{"remove":["a..b"],"rename":{"items[0]":"x"}}}"#,
        );
        for expected in [
            "method: `GE T` is not a valid method",
            "host: `a/b` is not a valid host",
            "query.rename: `a` and `b` are both renamed to `c`",
            "query.set.x: the parameter is also in `query.remove`",
            "request_headers.set: `bad name` is not a valid header name",
            "request_headers.set.x-ok: the value must not contain control characters",
            "request_headers.remove: `content-length` is set by the gateway",
            "response_headers.rename.x-a: renames the header to itself",
            "body.remove[0]: `a..b`: empty key",
            "body.rename.\"items[0]\": the path must end with a key",
        ] {
            assert!(
                message.contains(expected),
                "missing `{expected}` in: {message}"
            );
        }
    }

    #[test]
    fn host_twice_is_refused() {
        let message = problems(r#"{"host":"a","request_headers":{"set":{"Host":"b"}}}"#);
        assert_eq!(
            message,
            "host, request_headers.set: both set the `host` header; keep one"
        );
    }

    #[test]
    fn unknown_fields_and_bad_policies_are_rejected() {
        for (json, expected) in [
            (r#"{"paths":[]}"#, "unknown field `paths`"),
            (r#"{"path":[{"strip":"/a"}]}"#, "unknown field `strip`"),
            (
                r#"{"body":{"on_too_large":"drop"}}"#,
                "unknown variant `drop`",
            ),
            (r#"{"query":{"delete":["a"]}}"#, "unknown field `delete`"),
        ] {
            let err = problems(json);
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}
