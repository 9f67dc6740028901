//! Reading and checking a verified token's claims.

use serde_json::{Map, Value};

/// A token's claims.
pub(crate) type Claims = Map<String, Value>;

/// The claim `name`: the top-level claim of that exact name if there is
/// one (names such as `https://example.com/roles` contain dots), otherwise
/// the dotted path through nested objects (`realm_access.roles`).
pub(crate) fn lookup<'a>(claims: &'a Claims, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value).filter(|v| !v.is_null());
    }
    if !name.contains('.') {
        return None;
    }
    let mut segments = name.split('.');
    let mut value = claims.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value).filter(|v| !v.is_null())
}

/// A string or number claim as text (a `sub` may be numeric).
pub(crate) fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Roles from a claim that is an array of strings or a space-separated
/// string (as OAuth's `scope`). Empty entries are dropped.
pub(crate) fn as_roles(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .filter(|item| item.as_deref() != Some(""))
            .collect(),
        _ => None,
    }
}

/// A claim rendered as a header value: strings as they are, numbers and
/// booleans as JSON, arrays as their elements so rendered and joined with
/// `,`, objects as compact JSON. `None` if the result would not be a valid
/// header value (control characters).
pub(crate) fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    (!text.chars().any(|c| c.is_control() && c != '\t')).then_some(text)
}

/// What the claim checks need from the configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checks {
    /// Accepted issuers; `None`: `iss` is not checked.
    pub(crate) issuers: Option<Vec<String>>,
    /// Accepted audiences; `None`: `aud` is not checked.
    pub(crate) audiences: Option<Vec<String>>,
    /// Claims every token must have.
    pub(crate) required: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    pub(crate) leeway_seconds: u64,
}

impl Checks {
    /// Checks the registered claims at `now_ms` (the gateway's clock, ms
    /// since the epoch). The error is an RFC 6750 `error_description`.
    ///
    /// Every registered claim that is present must have its RFC 7519 type
    /// ([`check_types`]), whether or not it is otherwise checked: a claim
    /// of the wrong type makes the token invalid, it is never taken as
    /// absent.
    pub(crate) fn check(&self, claims: &Claims, now_ms: u64) -> Result<(), String> {
        check_types(claims)?;
        for name in &self.required {
            if lookup(claims, name).is_none() {
                return Err(format!("the token has no `{name}` claim"));
            }
        }
        self.check_exp(number(claims, "exp"), now_ms)?;
        self.check_nbf(number(claims, "nbf"), now_ms)?;
        if let Some(issuers) = &self.issuers {
            match claims.get("iss") {
                None => return Err("the token has no `iss` claim".to_owned()),
                Some(Value::String(iss)) if issuers.iter().any(|i| i == iss) => {}
                Some(_) => return Err("the token's issuer is not accepted".to_owned()),
            }
        }
        if let Some(audiences) = &self.audiences {
            let accepted = |aud: &str| audiences.iter().any(|a| a == aud);
            match claims.get("aud") {
                None => return Err("the token has no `aud` claim".to_owned()),
                Some(Value::String(aud)) if accepted(aud) => {}
                Some(Value::Array(auds))
                    if auds.iter().any(|a| a.as_str().is_some_and(accepted)) => {}
                Some(_) => return Err("the token's audience is not accepted".to_owned()),
            }
        }
        Ok(())
    }

    /// Checks a token's `exp` and `nbf` (seconds since the epoch, absent:
    /// not checked) at `now_ms`, with the leeway: what
    /// [`check`](Self::check) does for them, with the same errors, for a
    /// token verified earlier.
    pub(crate) fn check_times(
        &self,
        exp: Option<f64>,
        nbf: Option<f64>,
        now_ms: u64,
    ) -> Result<(), String> {
        self.check_exp(exp, now_ms)?;
        self.check_nbf(nbf, now_ms)
    }

    /// A token is expired once `now >= exp + leeway`.
    fn check_exp(&self, exp: Option<f64>, now_ms: u64) -> Result<(), String> {
        match exp {
            Some(exp) if seconds(now_ms) >= exp + self.leeway_seconds as f64 => {
                Err("the token has expired".to_owned())
            }
            _ => Ok(()),
        }
    }

    /// A token is not valid yet while `now + leeway < nbf`.
    fn check_nbf(&self, nbf: Option<f64>, now_ms: u64) -> Result<(), String> {
        match nbf {
            Some(nbf) if seconds(now_ms) + (self.leeway_seconds as f64) < nbf => {
                Err("the token is not valid yet".to_owned())
            }
            _ => Ok(()),
        }
    }
}

/// `now_ms` in seconds, as a float: a NumericDate may have a fraction
/// (RFC 7519 §2).
fn seconds(now_ms: u64) -> f64 {
    now_ms as f64 / 1000.0
}

/// The registered claims of RFC 7519 §4.1 that have a type, and that
/// type: `iss`, `sub` and `jti` are strings (StringOrURI, or a string);
/// `aud` is a string or an array whose every element is a string;
/// `exp`, `nbf` and `iat` are NumericDates (numbers, fractions allowed).
/// A present claim of another type (`null` included) fails the token, even
/// when the claim is not otherwise checked and even when, for `aud`, another
/// element would match.
pub(crate) fn check_types(claims: &Claims) -> Result<(), String> {
    for name in ["iss", "sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(format!("the `{name}` claim is not a string"));
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err("the `aud` claim is not a string or an array of strings".to_owned());
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_number()) {
            return Err(format!("the `{name}` claim is not a number"));
        }
    }
    Ok(())
}

/// The NumericDate claim `name`, if present and a number ([`check_types`]
/// has refused a token where it is anything else).
pub(crate) fn number(claims: &Claims, name: &str) -> Option<f64> {
    claims.get(name).and_then(Value::as_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: Value) -> Claims {
        match json {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    const NOW_MS: u64 = 1_700_000_000_000;
    const NOW: u64 = NOW_MS / 1000;

    fn checks() -> Checks {
        Checks {
            issuers: Some(vec!["https://idp.example".to_owned(), "other".to_owned()]),
            audiences: Some(vec!["api".to_owned()]),
            required: vec!["exp".to_owned()],
            leeway_seconds: 30,
        }
    }

    fn valid() -> Value {
        serde_json::json!({
            "iss": "https://idp.example", "aud": "api", "exp": NOW + 60, "nbf": NOW - 60, "sub": "alice",
        })
    }

    fn with(field: &str, value: Value) -> Claims {
        let mut c = claims(valid());
        if value.is_null() {
            c.remove(field);
        } else {
            c.insert(field.to_owned(), value);
        }
        c
    }

    #[test]
    fn a_valid_token_passes() {
        assert_eq!(checks().check(&claims(valid()), NOW_MS), Ok(()));
        assert_eq!(
            checks().check(&with("aud", serde_json::json!(["x", "api"])), NOW_MS),
            Ok(())
        );
        assert_eq!(
            checks().check(&with("iss", serde_json::json!("other")), NOW_MS),
            Ok(())
        );
    }

    #[test]
    fn expiry_uses_the_given_clock_and_the_leeway() {
        let c = with("exp", serde_json::json!(NOW));
        assert_eq!(
            checks().check(&c, NOW_MS + 29_999),
            Ok(()),
            "within the leeway"
        );
        assert_eq!(
            checks().check(&c, NOW_MS + 30_000),
            Err("the token has expired".to_owned())
        );
        let strict = Checks {
            leeway_seconds: 0,
            ..checks()
        };
        assert_eq!(strict.check(&c, NOW_MS - 1), Ok(()));
        assert_eq!(
            strict.check(&c, NOW_MS),
            Err("the token has expired".to_owned())
        );
        let fractional = with("exp", serde_json::json!(NOW as f64 + 0.5));
        assert_eq!(strict.check(&fractional, NOW_MS + 499), Ok(()));
        assert!(strict.check(&fractional, NOW_MS + 500).is_err());
    }

    #[test]
    fn not_before_uses_the_given_clock_and_the_leeway() {
        let c = with("nbf", serde_json::json!(NOW + 100));
        assert_eq!(
            checks().check(&c, NOW_MS + 69_999),
            Err("the token is not valid yet".to_owned())
        );
        assert_eq!(checks().check(&c, NOW_MS + 70_000), Ok(()));
    }

    #[test]
    fn claims_that_fail_say_why() {
        let cases = [
            (with("exp", Value::Null), "the token has no `exp` claim"),
            (
                with("exp", serde_json::json!("tomorrow")),
                "the `exp` claim is not a number",
            ),
            (
                with("nbf", serde_json::json!(true)),
                "the `nbf` claim is not a number",
            ),
            (with("iss", Value::Null), "the token has no `iss` claim"),
            (
                with("iss", serde_json::json!("https://evil.example")),
                "the token's issuer is not accepted",
            ),
            (
                with("iss", serde_json::json!(["https://idp.example"])),
                "the `iss` claim is not a string",
            ),
            (with("aud", Value::Null), "the token has no `aud` claim"),
            (
                with("aud", serde_json::json!("other-api")),
                "the token's audience is not accepted",
            ),
            (
                with("aud", serde_json::json!(["a", "b"])),
                "the token's audience is not accepted",
            ),
            (
                with("aud", serde_json::json!(5)),
                "the `aud` claim is not a string or an array of strings",
            ),
        ];
        for (c, expected) in cases {
            assert_eq!(
                checks().check(&c, NOW_MS),
                Err(expected.to_owned()),
                "{c:?}"
            );
        }
    }

    /// RFC 7519 §4.1: a registered claim of the wrong type makes the token
    /// invalid, whatever else matches and whether or not it is checked.
    #[test]
    fn registered_claims_of_the_wrong_type_refuse_the_token() {
        use serde_json::json;
        let aud = "the `aud` claim is not a string or an array of strings";
        let cases = [
            ("aud", json!(["api", 5]), aud),
            ("aud", json!(["api", null]), aud),
            ("aud", json!(["api", { "x": "api" }]), aud),
            ("aud", json!(["api", ["api"]]), aud),
            ("aud", json!(null), aud),
            ("aud", json!(true), aud),
            ("iss", json!(42), "the `iss` claim is not a string"),
            ("iss", json!(null), "the `iss` claim is not a string"),
            ("sub", json!(42), "the `sub` claim is not a string"),
            ("sub", json!(["alice"]), "the `sub` claim is not a string"),
            ("sub", json!(null), "the `sub` claim is not a string"),
            ("jti", json!(7), "the `jti` claim is not a string"),
            ("exp", json!("tomorrow"), "the `exp` claim is not a number"),
            ("exp", json!(null), "the `exp` claim is not a number"),
            ("nbf", json!([1]), "the `nbf` claim is not a number"),
            (
                "iat",
                json!("2025-01-01"),
                "the `iat` claim is not a number",
            ),
            ("iat", json!(null), "the `iat` claim is not a number"),
        ];
        for (name, value, expected) in cases {
            let mut c = claims(valid());
            c.insert(name.to_owned(), value.clone());
            let expected = Err(expected.to_owned());
            assert_eq!(checks().check(&c, NOW_MS), expected, "{name}: {value}");
            // Unchecked claims still have to have their type.
            assert_eq!(
                Checks::default().check(&c, NOW_MS),
                expected,
                "{name}: {value}, unchecked"
            );
        }
        // The right types pass, fractions and empty arrays included.
        let mut c = claims(valid());
        c.insert("iat".into(), json!(NOW as f64 - 0.25));
        c.insert("jti".into(), json!("id-1"));
        c.insert("aud".into(), json!([]));
        assert_eq!(Checks::default().check(&c, NOW_MS), Ok(()));
        assert_eq!(
            checks().check(&c, NOW_MS),
            Err("the token's audience is not accepted".to_owned())
        );
    }

    #[test]
    fn unset_checks_are_skipped() {
        let lax = Checks::default();
        assert_eq!(lax.check(&claims(serde_json::json!({})), NOW_MS), Ok(()));
        assert_eq!(
            lax.check(
                &claims(serde_json::json!({ "iss": "anyone", "aud": "any" })),
                NOW_MS
            ),
            Ok(())
        );
        assert!(
            lax.check(&claims(serde_json::json!({ "exp": 1 })), NOW_MS)
                .is_err(),
            "a present exp is always checked"
        );
    }

    #[test]
    fn claims_are_found_by_name_or_dotted_path() {
        let c = claims(serde_json::json!({
            "https://example.com/roles": ["a"],
            "realm_access": { "roles": ["admin"], "deep": { "x": 1 } },
            "a.b": "flat",
            "a": { "b": "nested" },
            "gone": null,
        }));
        assert_eq!(
            lookup(&c, "https://example.com/roles"),
            Some(&serde_json::json!(["a"]))
        );
        assert_eq!(
            lookup(&c, "realm_access.roles"),
            Some(&serde_json::json!(["admin"]))
        );
        assert_eq!(
            lookup(&c, "realm_access.deep.x"),
            Some(&serde_json::json!(1))
        );
        assert_eq!(
            lookup(&c, "a.b"),
            Some(&serde_json::json!("flat")),
            "exact names first"
        );
        assert_eq!(lookup(&c, "realm_access.missing"), None);
        assert_eq!(lookup(&c, "realm_access.roles.x"), None);
        assert_eq!(lookup(&c, "gone"), None);
        assert_eq!(lookup(&c, "nothing"), None);
    }

    #[test]
    fn roles_from_arrays_or_space_separated_strings() {
        assert_eq!(
            as_roles(&serde_json::json!(["admin", "", "ops"])),
            Some(vec!["admin".to_owned(), "ops".to_owned()])
        );
        assert_eq!(
            as_roles(&serde_json::json!(" read:orders  write:orders ")),
            Some(vec!["read:orders".to_owned(), "write:orders".to_owned()])
        );
        assert_eq!(as_roles(&serde_json::json!(["admin", 5])), None);
        assert_eq!(as_roles(&serde_json::json!({ "admin": true })), None);
        assert_eq!(as_text(&serde_json::json!(42)), Some("42".to_owned()));
        assert_eq!(as_text(&serde_json::json!(["x"])), None);
    }

    #[test]
    fn claims_render_as_header_values() {
        assert_eq!(
            header_value(&serde_json::json!("a b")),
            Some("a b".to_owned())
        );
        assert_eq!(header_value(&serde_json::json!(12)), Some("12".to_owned()));
        assert_eq!(
            header_value(&serde_json::json!(true)),
            Some("true".to_owned())
        );
        assert_eq!(
            header_value(&serde_json::json!(["a", 1, "b"])),
            Some("a,1,b".to_owned())
        );
        assert_eq!(
            header_value(&serde_json::json!({ "k": "v" })),
            Some(r#"{"k":"v"}"#.to_owned())
        );
        assert_eq!(
            header_value(&serde_json::json!("line\r\nx-injected: 1")),
            None
        );
        assert_eq!(header_value(&Value::Null), None);
    }
}
