//! Path patterns: compiled once at `init`, matched against the decoded
//! segments of each request path.
//!
//! A pattern is `/` followed by segments separated by `/`, each one of:
//!
//! - a literal, matched exactly (case-sensitively) against the decoded
//!   segment: write `café`, not `caf%C3%A9`;
//! - `{name}`, which matches any one segment and names it (for
//!   `require_tenant`);
//! - `*`, which matches any one segment;
//! - `**`, last only, which matches any number of segments, none included:
//!   `/api/**` matches `/api`, `/api/x` and `/api/x/y`.
//!
//! `/` alone matches only the root path.

use std::fmt;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches this exact decoded segment.
    Literal(String),
    /// `{name}` or `*`: any one segment.
    One,
    /// `**`: any number of trailing segments.
    Tail,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// The segments, `Tail` only last.
    segments: Vec<Segment>,
    /// The `{name}` captures and the index of the segment each one matches.
    params: Vec<(String, usize)>,
}

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatternError(String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(what: impl Into<String>) -> PatternError {
    PatternError(what.into())
}

impl Pattern {
    /// Compiles `text`, or says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, PatternError> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| error(format!("`{text}` must start with `/`")))?;
        let mut pattern = Pattern {
            segments: Vec::new(),
            params: Vec::new(),
        };
        if rest.is_empty() {
            return Ok(pattern);
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let segment = match part {
                "" if i == last => {
                    return Err(error(format!(
                        "`{text}` must not end with `/` (a trailing slash in the request path is ignored)"
                    )));
                }
                "" => return Err(error(format!("`{text}` has an empty segment (`//`)"))),
                "**" if i == last => Segment::Tail,
                "**" => {
                    return Err(error(format!(
                        "`{text}`: `**` may only be the last segment"
                    )));
                }
                "*" => Segment::One,
                "." | ".." => {
                    return Err(error(format!(
                        "`{text}` has a `{part}` segment, which no request path may have"
                    )));
                }
                _ if part.starts_with('{') && part.ends_with('}') => {
                    let name = &part[1..part.len() - 1];
                    if !is_param_name(name) {
                        return Err(error(format!(
                            "`{text}`: `{part}` is not a valid parameter (`{{name}}` with letters, digits and `_`, not starting with a digit)"
                        )));
                    }
                    if pattern.params.iter().any(|(n, _)| n == name) {
                        return Err(error(format!(
                            "`{text}`: the parameter `{{{name}}}` appears twice"
                        )));
                    }
                    pattern.params.push((name.to_owned(), i));
                    Segment::One
                }
                _ if part.contains(['{', '}', '*']) => {
                    return Err(error(format!(
                        "`{text}`: the segment `{part}` mixes text with `{{`, `}}` or `*`; a segment is a literal, `*`, `**` or a whole `{{name}}`"
                    )));
                }
                _ if part.contains('%') => {
                    return Err(error(format!(
                        "`{text}`: the segment `{part}` has a `%`; patterns match the percent-decoded path, so write the character itself"
                    )));
                }
                _ if part.contains('\\') || part.chars().any(char::is_control) => {
                    return Err(error(format!(
                        "`{text}`: the segment `{part}` has a `\\` or a control character, which no request path may have"
                    )));
                }
                _ => Segment::Literal(part.to_owned()),
            };
            pattern.segments.push(segment);
        }
        Ok(pattern)
    }

    /// Whether the decoded `path` segments match.
    pub(crate) fn matches(&self, path: &[String]) -> bool {
        let (fixed, tail) = match self.segments.split_last() {
            Some((Segment::Tail, fixed)) => (fixed, true),
            _ => (self.segments.as_slice(), false),
        };
        let length_fits = if tail {
            path.len() >= fixed.len()
        } else {
            path.len() == fixed.len()
        };
        length_fits
            && fixed.iter().zip(path).all(|(segment, part)| match segment {
                Segment::Literal(literal) => literal == part,
                Segment::One | Segment::Tail => true,
            })
    }

    /// The index of the path segment that `{name}` matches, if the pattern
    /// has that parameter.
    pub(crate) fn param_index(&self, name: &str) -> Option<usize> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, index)| index)
    }
}

/// Whether `name` is a valid `{name}`: an identifier of ASCII letters,
/// digits and `_`, not starting with a digit.
pub(crate) fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn path(text: &str) -> Vec<String> {
        crate::path::segments(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn matches(pattern_text: &str, path_text: &str) -> bool {
        pattern(pattern_text).matches(&path(path_text))
    }

    #[test]
    fn literals_match_exactly() {
        assert!(matches("/users", "/users"));
        assert!(matches("/users", "/users/"));
        assert!(matches("/users/me", "/users/me"));
        assert!(matches("/café", "/caf%C3%A9"));
        assert!(matches("/admin", "/%61dmin"), "decoded before matching");
        assert!(!matches("/users", "/Users"), "case-sensitive");
        assert!(!matches("/users", "/users/me"));
        assert!(!matches("/users/me", "/users"));
        assert!(!matches("/users", "/"));
        assert!(!matches("/users", "/userss"));
    }

    #[test]
    fn the_root_pattern_matches_only_the_root() {
        assert!(matches("/", "/"));
        assert!(!matches("/", "/a"));
    }

    #[test]
    fn one_segment_wildcards_match_one_segment() {
        for p in ["/users/*", "/users/{id}"] {
            assert!(matches(p, "/users/42"), "{p}");
            assert!(matches(p, "/users/a%20b"), "{p}");
            assert!(!matches(p, "/users"), "{p}");
            assert!(!matches(p, "/users/42/orders"), "{p}");
        }
        assert!(matches("/*/orders/{id}", "/acme/orders/7"));
        assert!(!matches("/*/orders/{id}", "/acme/invoices/7"));
    }

    #[test]
    fn a_tail_matches_any_rest_including_nothing() {
        assert!(matches("/api/**", "/api"));
        assert!(matches("/api/**", "/api/"));
        assert!(matches("/api/**", "/api/x"));
        assert!(matches("/api/**", "/api/x/y/z"));
        assert!(!matches("/api/**", "/apix"));
        assert!(!matches("/api/**", "/other/api"));
        assert!(matches("/**", "/"));
        assert!(matches("/**", "/anything/at/all"));
        assert!(matches("/t/{tenant}/**", "/t/acme"));
    }

    #[test]
    fn parameters_are_located() {
        let p = pattern("/tenants/{tenant}/orders/{id}/**");
        assert_eq!(p.param_index("tenant"), Some(1));
        assert_eq!(p.param_index("id"), Some(3));
        assert_eq!(p.param_index("other"), None);
        assert_eq!(pattern("/*").param_index("tenant"), None);
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        let cases = [
            ("users", "must start with `/`"),
            ("", "must start with `/`"),
            ("/users/", "must not end with `/`"),
            ("//users", "empty segment"),
            ("/a//b", "empty segment"),
            ("/**/x", "`**` may only be the last segment"),
            ("/a/../b", "`..` segment"),
            ("/a/./b", "`.` segment"),
            ("/{}", "not a valid parameter"),
            ("/{1x}", "not a valid parameter"),
            ("/{a-b}", "not a valid parameter"),
            ("/{a}/{a}", "appears twice"),
            ("/v{version}", "mixes text"),
            ("/{a}x", "mixes text"),
            ("/*.json", "mixes text"),
            ("/***", "mixes text"),
            ("/caf%C3%A9", "has a `%`"),
            ("/a\\b", "control character"),
        ];
        for (text, expected) in cases {
            let err = Pattern::parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn parameter_names_are_identifiers() {
        assert!(is_param_name("tenant"));
        assert!(is_param_name("_t1"));
        assert!(!is_param_name(""));
        assert!(!is_param_name("9"));
        assert!(!is_param_name("a b"));
    }
}
