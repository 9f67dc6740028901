//! Regexes from a configuration and their replacement templates, checked
//! at load time.
//!
//! The `regex` crate expands `$1`, `${1}`, `$name` and `${name}` in a
//! replacement, and silently expands a reference to a group that does not
//! exist to nothing. `$1a` is read as the group *named* `1a`, a classic
//! slip; so [`check`] tests every reference against the regex's groups.
//!
//! ```
//! use portcullis_plugin_kit::template::{check, compile_regex};
//!
//! let regex = compile_regex(r"^/v1/users/(\d+)$").expect("valid");
//! assert_eq!(check(&regex, "/users/${1}"), Ok(()));
//! assert!(check(&regex, "/users/$1a").is_err());
//! assert!(compile_regex("(").is_err());
//! ```

use regex::Regex;

/// Compiles `text` as a regex, or says what is wrong with it on one line:
/// `invalid regex: ...` (the regex crate's own message spans several lines,
/// with a caret under the fault).
pub fn compile_regex(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|e| format!("invalid regex: {}", one_line(&e.to_string())))
}

/// `text` with each run of white space (line breaks included) made one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Says what is wrong with `template` as a replacement for `regex`: a
/// reference to a group the regex does not have, or a `${` without `}`.
pub fn check(regex: &Regex, template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        let after = &rest[dollar + 1..];
        if let Some(after) = after.strip_prefix('$') {
            rest = after;
            continue;
        }
        let (name, braced, next) = if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(format!("`${{` without `}}` in `{template}`"));
            };
            (&inner[..end], true, &inner[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], false, &after[end..])
        };
        rest = next;
        if name.is_empty() {
            // A lone `$` is kept literally by the regex crate.
            continue;
        }
        let exists = match name.parse::<usize>() {
            Ok(index) => index < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == name),
        };
        if !exists {
            let hint = match name.find(|c: char| !c.is_ascii_digit()) {
                Some(cut) if cut > 0 && !braced => format!(
                    " (write `${{{}}}{}` for group {} followed by `{}`)",
                    &name[..cut],
                    &name[cut..],
                    &name[..cut],
                    &name[cut..]
                ),
                _ => String::new(),
            };
            return Err(format!(
                "`${name}` refers to no capture group of the regex{hint}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(text: &str) -> Regex {
        Regex::new(text).expect("valid regex")
    }

    #[test]
    fn bad_regexes_are_refused_on_one_line() {
        let error = compile_regex("^/v1/(unclosed").expect_err("unclosed group");
        assert!(error.starts_with("invalid regex: "), "{error}");
        assert!(error.contains("unclosed group"), "{error}");
        assert!(!error.contains('\n'), "{error}");
        assert!(compile_regex(r"^/v1/(\d+)$").is_ok());
    }

    #[test]
    fn good_references_pass() {
        let r = regex(r"^/v1/users/(\d+)/(?<rest>.*)$");
        for template in [
            "/users/$1",
            "/users/${1}x",
            "/u/$2/$rest",
            "/u/${rest}",
            "$$1",
            "cost: $",
            "/$0",
            "no refs",
        ] {
            assert_eq!(check(&r, template), Ok(()), "{template}");
        }
    }

    #[test]
    fn missing_groups_are_named() {
        let r = regex(r"^/v1/users/(\d+)$");
        assert_eq!(
            check(&r, "/users/$2"),
            Err("`$2` refers to no capture group of the regex".to_owned())
        );
        assert_eq!(
            check(&r, "/users/$1a"),
            Err("`$1a` refers to no capture group of the regex (write `${1}a` for group 1 followed by `a`)".to_owned())
        );
        assert!(check(&r, "/u/${name}").is_err());
        assert!(check(&r, "/u/${1").is_err());
    }
}
