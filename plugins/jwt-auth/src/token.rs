//! Finding the token in a request: a header or a cookie.

/// The token in a header value. In `Authorization` (`is_authorization`) it
/// must follow the `Bearer` scheme (RFC 6750 §2.1); in another header the
/// `Bearer ` prefix is optional. `None` for an empty value or another
/// scheme.
pub(crate) fn from_header(value: &str, is_authorization: bool) -> Option<&str> {
    let value = value.trim();
    let token = match value.split_once([' ', '\t']) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if is_authorization => return None,
        _ => value,
    };
    (!token.is_empty()).then_some(token)
}

/// The value of the cookie `name` in the `Cookie` header values (the first
/// one found), without surrounding double quotes. `None` if it is absent
/// or empty.
pub(crate) fn from_cookies<'a>(cookie_headers: &'a [String], name: &str) -> Option<&'a str> {
    cookie_headers
        .iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
        .filter(|value| !value.is_empty())
}

/// The `Cookie` header values without any cookie called `name`; values
/// left empty are dropped.
pub(crate) fn without_cookie(cookie_headers: &[String], name: &str) -> Vec<String> {
    cookie_headers
        .iter()
        .map(|header| {
            header
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k).trim() != name)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|header| !header.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn bearer_tokens_in_authorization() {
        assert_eq!(from_header("Bearer abc.def.ghi", true), Some("abc.def.ghi"));
        assert_eq!(
            from_header("  bearer   abc.def.ghi ", true),
            Some("abc.def.ghi")
        );
        assert_eq!(from_header("BEARER x", true), Some("x"));
        assert_eq!(from_header("Basic YTpi", true), None);
        assert_eq!(
            from_header("abc.def.ghi", true),
            None,
            "the scheme is required"
        );
        assert_eq!(from_header("Bearer", true), None);
        assert_eq!(from_header("Bearer   ", true), None);
    }

    #[test]
    fn other_headers_take_the_bare_token_or_a_bearer_one() {
        assert_eq!(from_header("abc.def.ghi", false), Some("abc.def.ghi"));
        assert_eq!(
            from_header("Bearer abc.def.ghi", false),
            Some("abc.def.ghi")
        );
        assert_eq!(from_header(" ", false), None);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let jar = cookies(&["theme=dark; jwt=a.b.c", "other=1"]);
        assert_eq!(from_cookies(&jar, "jwt"), Some("a.b.c"));
        assert_eq!(from_cookies(&jar, "other"), Some("1"));
        assert_eq!(from_cookies(&jar, "JWT"), None);
        assert_eq!(from_cookies(&jar, "jw"), None);
        assert_eq!(
            from_cookies(&cookies(&["jwt=\"a.b.c\""]), "jwt"),
            Some("a.b.c")
        );
        assert_eq!(from_cookies(&cookies(&["jwt=; x=1"]), "jwt"), None);
        assert_eq!(
            from_cookies(&cookies(&["jwt=first; jwt=second"]), "jwt"),
            Some("first")
        );
        assert_eq!(from_cookies(&[], "jwt"), None);
    }

    #[test]
    fn the_token_cookie_is_taken_out_and_the_rest_kept() {
        let jar = cookies(&["theme=dark; jwt=a.b.c;lang=en", "jwt=x", "a=1"]);
        assert_eq!(without_cookie(&jar, "jwt"), ["theme=dark; lang=en", "a=1"]);
        assert_eq!(
            without_cookie(&cookies(&["jwt=x"]), "jwt"),
            Vec::<String>::new()
        );
        assert_eq!(without_cookie(&cookies(&["flag; jwt=x"]), "jwt"), ["flag"]);
    }
}
