//! Path and query rewrites: plain functions of plain strings.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;

/// One path rule. The first rule that matches a path rewrites it; the
/// others are not tried.
#[derive(Debug)]
pub(crate) enum PathRule {
    /// Removes a prefix that ends at a segment boundary.
    StripPrefix(String),
    /// Replaces a prefix that ends at a segment boundary.
    ReplacePrefix {
        /// The prefix, starting with `/`.
        prefix: String,
        /// What takes its place, starting with `/`.
        with: String,
    },
    /// Replaces the first match of a regex, with `$1`/`${name}` captures.
    Regex {
        /// The pattern, matched against the path without the query.
        regex: Regex,
        /// The replacement template.
        replace: String,
    },
}

impl PathRule {
    /// The rewritten path if this rule matches `path`.
    pub(crate) fn apply(&self, path: &str) -> Option<String> {
        let rewritten = match self {
            PathRule::StripPrefix(prefix) => join("/", strip_segment_prefix(path, prefix)?),
            PathRule::ReplacePrefix { prefix, with } => {
                join(with, strip_segment_prefix(path, prefix)?)
            }
            PathRule::Regex { regex, replace } => {
                if !regex.is_match(path) {
                    return None;
                }
                regex.replace(path, replace.as_str()).into_owned()
            }
        };
        Some(if rewritten.starts_with('/') {
            rewritten
        } else {
            format!("/{rewritten}")
        })
    }
}

/// The path after the first rule of `rules` that matches, if one does.
pub(crate) fn rewrite_path(rules: &[PathRule], path: &str) -> Option<String> {
    rules.iter().find_map(|rule| rule.apply(path))
}

/// What follows `prefix` in `path` if `path` starts with it at a segment
/// boundary: `/api` is a prefix of `/api` and `/api/x`, not of `/apix`. A
/// prefix that ends with `/` matches any path that starts with it.
fn strip_segment_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// `base` followed by `rest` with exactly one `/` between them when both
/// have one there.
fn join(base: &str, rest: &str) -> String {
    match (base.strip_suffix('/'), rest.starts_with('/')) {
        (Some(trimmed), true) => format!("{trimmed}{rest}"),
        _ => format!("{base}{rest}"),
    }
}

/// The query rules, applied to each parameter in the order: map the value
/// (by the name the client sent), rename, remove (by the new name), set.
#[derive(Debug, Default)]
pub(crate) struct QueryRules {
    /// Value mappings by parameter name: `sort` -> { `asc` -> `ascending` }.
    pub(crate) map: BTreeMap<String, BTreeMap<String, String>>,
    /// New names by old name.
    pub(crate) rename: BTreeMap<String, String>,
    /// Parameters to drop (every occurrence).
    pub(crate) remove: BTreeSet<String>,
    /// Parameters to set: the first occurrence takes the value, the others
    /// go; added at the end when absent.
    pub(crate) set: BTreeMap<String, String>,
}

impl QueryRules {
    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
            && self.rename.is_empty()
            && self.remove.is_empty()
            && self.set.is_empty()
    }

    /// The rewritten query (without `?`; `""` when nothing is left) for the
    /// raw query `query` (`""` when the request has none), or `None` when
    /// nothing changes.
    ///
    /// Names and values are compared after percent-decoding (`+` read as a
    /// space). Parameters that no rule changes are kept byte for byte and in
    /// order; changed ones are re-encoded (`application/x-www-form-urlencoded`,
    /// a space becomes `+`). Empty segments (`a=1&&b=2`) are dropped from a
    /// rewritten query.
    pub(crate) fn apply(&self, query: &str) -> Option<String> {
        let mut changed = false;
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        let mut out: Vec<String> = Vec::new();
        for segment in query.split('&') {
            if segment.is_empty() {
                continue;
            }
            let (name, value) = form_urlencoded::parse(segment.as_bytes())
                .next()
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .unwrap_or_default();
            let mapped = self.map.get(&name).and_then(|values| values.get(&value));
            let renamed = self.rename.get(&name);
            let new_name = renamed.map_or(name.as_str(), String::as_str);
            if self.remove.contains(new_name) {
                changed = true;
                continue;
            }
            if let Some((set_name, set_value)) = self.set.get_key_value(new_name) {
                changed = true;
                if placed.insert(set_name.as_str()) {
                    out.push(pair(set_name, set_value, true));
                }
                continue;
            }
            if mapped.is_none() && renamed.is_none() {
                out.push(segment.to_owned());
                continue;
            }
            changed = true;
            let new_value = mapped.map_or(value.as_str(), String::as_str);
            out.push(pair(new_name, new_value, segment.contains('=')));
        }
        for (name, value) in &self.set {
            if !placed.contains(name.as_str()) {
                changed = true;
                out.push(pair(name, value, true));
            }
        }
        changed.then(|| out.join("&"))
    }
}

/// `name=value`, form-encoded; just `name` for a valueless flag.
fn pair(name: &str, value: &str, with_equals: bool) -> String {
    let name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
    if !with_equals && value.is_empty() {
        return name;
    }
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{name}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex_rule(regex: &str, replace: &str) -> PathRule {
        PathRule::Regex {
            regex: Regex::new(regex).expect("regex"),
            replace: replace.to_owned(),
        }
    }

    #[test]
    fn strip_prefix_stops_at_segment_boundaries() {
        let rule = PathRule::StripPrefix("/api".into());
        assert_eq!(rule.apply("/api/users").as_deref(), Some("/users"));
        assert_eq!(rule.apply("/api").as_deref(), Some("/"));
        assert_eq!(rule.apply("/api/").as_deref(), Some("/"));
        assert_eq!(rule.apply("/apiary"), None);
        assert_eq!(rule.apply("/v1/api"), None);
        let slash = PathRule::StripPrefix("/api/".into());
        assert_eq!(slash.apply("/api/users").as_deref(), Some("/users"));
        assert_eq!(slash.apply("/api"), None);
    }

    #[test]
    fn replace_prefix_keeps_one_slash() {
        let rule = PathRule::ReplacePrefix {
            prefix: "/v1".into(),
            with: "/v2".into(),
        };
        assert_eq!(rule.apply("/v1/users/7").as_deref(), Some("/v2/users/7"));
        assert_eq!(rule.apply("/v1").as_deref(), Some("/v2"));
        assert_eq!(rule.apply("/v10/users"), None);
        let to_root = PathRule::ReplacePrefix {
            prefix: "/legacy".into(),
            with: "/".into(),
        };
        assert_eq!(to_root.apply("/legacy/a").as_deref(), Some("/a"));
        let nested = PathRule::ReplacePrefix {
            prefix: "/old".into(),
            with: "/new/base/".into(),
        };
        assert_eq!(nested.apply("/old/x").as_deref(), Some("/new/base/x"));
    }

    #[test]
    fn regex_rules_expand_captures() {
        let rule = regex_rule(r"^/v1/users/(\d+)$", "/users/$1");
        assert_eq!(rule.apply("/v1/users/42").as_deref(), Some("/users/42"));
        assert_eq!(rule.apply("/v1/users/42/orders"), None);
        assert_eq!(rule.apply("/v1/users/abc"), None);

        let named = regex_rule(
            r"^/shop/(?<shop>[^/]+)/items/(?<id>\d+)$",
            "/items/${id}/shop/${shop}x",
        );
        assert_eq!(
            named.apply("/shop/acme/items/9").as_deref(),
            Some("/items/9/shop/acmex")
        );

        let unanchored = regex_rule("/internal", "");
        assert_eq!(
            unanchored.apply("/a/internal/b").as_deref(),
            Some("/a/b"),
            "only the match is replaced"
        );
        let no_slash = regex_rule("^/(.*)$", "$1");
        assert_eq!(no_slash.apply("/x/y").as_deref(), Some("/x/y"));
        assert_eq!(no_slash.apply("/").as_deref(), Some("/"));
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = [
            regex_rule(r"^/v1/users/(\d+)$", "/users/$1"),
            PathRule::StripPrefix("/v1".into()),
        ];
        assert_eq!(
            rewrite_path(&rules, "/v1/users/5").as_deref(),
            Some("/users/5")
        );
        assert_eq!(
            rewrite_path(&rules, "/v1/orders").as_deref(),
            Some("/orders")
        );
        assert_eq!(rewrite_path(&rules, "/v2/orders"), None);
    }

    fn rules() -> QueryRules {
        let mut rules = QueryRules::default();
        rules.map.insert(
            "sort".into(),
            [("asc", "ascending"), ("desc", "descending")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
        );
        rules.rename.insert("sort".into(), "order".into());
        rules.rename.insert("q".into(), "search".into());
        rules.remove.insert("debug".into());
        rules.set.insert("version".into(), "2".into());
        rules
    }

    #[test]
    fn query_map_then_rename() {
        let rules = rules();
        assert_eq!(
            rules.apply("sort=asc&page=2").as_deref(),
            Some("order=ascending&page=2&version=2")
        );
        assert_eq!(
            rules.apply("sort=random").as_deref(),
            Some("order=random&version=2"),
            "an unmapped value is kept"
        );
        assert_eq!(
            rules.apply("q=red+shoes&x=%2F").as_deref(),
            Some("search=red+shoes&x=%2F&version=2")
        );
    }

    #[test]
    fn query_remove_and_set() {
        let rules = rules();
        assert_eq!(
            rules
                .apply("debug=1&version=1&a=1&version=3&debug")
                .as_deref(),
            Some("version=2&a=1"),
            "set takes the first place and drops the rest"
        );
        assert_eq!(rules.apply("").as_deref(), Some("version=2"));
        assert_eq!(
            rules.apply("version=2").as_deref(),
            Some("version=2"),
            "set counts as a change even with the same value"
        );
    }

    #[test]
    fn query_untouched_parameters_stay_byte_for_byte() {
        let mut rules = QueryRules::default();
        rules.remove.insert("drop me".into());
        assert_eq!(rules.apply("a=%41&b=c+d&e"), None);
        assert_eq!(
            rules.apply("a=%41&drop+me=1&&e").as_deref(),
            Some("a=%41&e")
        );
        assert_eq!(rules.apply("drop%20me=1").as_deref(), Some(""));
    }

    #[test]
    fn query_values_are_matched_decoded_and_written_encoded() {
        let mut rules = QueryRules::default();
        rules.map.insert(
            "city".into(),
            [("São Paulo".to_owned(), "sao paulo & co".to_owned())]
                .into_iter()
                .collect(),
        );
        rules.rename.insert("flag".into(), "enabled".into());
        assert_eq!(
            rules.apply("city=S%C3%A3o+Paulo&flag").as_deref(),
            Some("city=sao+paulo+%26+co&enabled")
        );
    }
}
