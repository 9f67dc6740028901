//! Where a request's API version comes from: a path segment, a header, or
//! a parameter of a media type in `Accept`.

/// The `index`th segment of `path` (0 is the one after the first `/`), as
/// the gateway normalised it (not decoded further), if it exists and is not
/// empty.
pub(crate) fn path_segment(path: &str, index: usize) -> Option<&str> {
    path.strip_prefix('/')?
        .split('/')
        .nth(index)
        .filter(|segment| !segment.is_empty())
}

/// A header value with surrounding whitespace removed, unless it is empty.
pub(crate) fn header_value(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|v| !v.is_empty())
}

/// The value of the parameter `param` (case-insensitive name) of the first
/// media range in the `Accept` header `values` (in order) that has it and,
/// if `media_type` is given, is that type (case-insensitive), e.g. `2` for
/// `application/vnd.acme+json; version=2`. Quoted values are unquoted.
pub(crate) fn media_type_param(
    values: &[String],
    media_type: Option<&str>,
    param: &str,
) -> Option<String> {
    values
        .iter()
        .flat_map(|value| split_unquoted(value, ','))
        .find_map(|range| {
            let mut parts = split_unquoted(range, ';').into_iter();
            let kind = parts.next()?.trim();
            if media_type.is_some_and(|wanted| !kind.eq_ignore_ascii_case(wanted)) {
                return None;
            }
            parts.find_map(|part| {
                let (name, value) = part.split_once('=')?;
                if !name.trim().eq_ignore_ascii_case(param) {
                    return None;
                }
                let value = unquote(value.trim());
                (!value.is_empty()).then_some(value)
            })
        })
}

/// `text` split at each `separator` that is not inside a quoted string.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A parameter value without its quotes and backslash escapes, if quoted.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_counted_from_the_first() {
        assert_eq!(path_segment("/v1/users", 0), Some("v1"));
        assert_eq!(path_segment("/api/v2/users", 1), Some("v2"));
        assert_eq!(path_segment("/api/v2", 1), Some("v2"));
        assert_eq!(path_segment("/api/v2/", 1), Some("v2"));
        assert_eq!(path_segment("/api", 1), None);
        assert_eq!(path_segment("/api/", 1), None);
        assert_eq!(path_segment("//v1", 0), None);
        assert_eq!(path_segment("/", 0), None);
        assert_eq!(path_segment("v1/x", 0), None);
    }

    #[test]
    fn header_values_are_trimmed() {
        assert_eq!(header_value(" 2 "), Some("2"));
        assert_eq!(header_value("2024-01-01"), Some("2024-01-01"));
        assert_eq!(header_value("  "), None);
    }

    fn param(accept: &[&str], media_type: Option<&str>) -> Option<String> {
        let values: Vec<String> = accept.iter().map(|v| (*v).to_owned()).collect();
        media_type_param(&values, media_type, "version")
    }

    #[test]
    fn the_version_parameter_is_found_in_accept() {
        assert_eq!(
            param(&["application/vnd.acme+json; version=2"], None).as_deref(),
            Some("2")
        );
        assert_eq!(
            param(&["application/vnd.acme+json;version=2;q=0.9"], None).as_deref(),
            Some("2")
        );
        assert_eq!(
            param(
                &["text/html, application/vnd.acme+json; q=1; Version=\"3\""],
                None
            )
            .as_deref(),
            Some("3")
        );
        assert_eq!(
            param(
                &["application/json", "application/vnd.acme+json; version=4"],
                None
            )
            .as_deref(),
            Some("4"),
            "every Accept header is read, in order"
        );
        assert_eq!(
            param(&["a/b; version=1, c/d; version=2"], None).as_deref(),
            Some("1"),
            "the first range with the parameter wins"
        );
        assert_eq!(param(&["application/json"], None), None);
        assert_eq!(param(&[], None), None);
        assert_eq!(param(&["a/b; version="], None), None);
        assert_eq!(param(&["a/b; versions=1"], None), None);
    }

    #[test]
    fn the_media_type_can_be_required() {
        let acme = Some("application/vnd.acme+json");
        assert_eq!(
            param(
                &["application/json; version=9, Application/VND.acme+JSON; version=2"],
                acme
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(param(&["application/json; version=9"], acme), None);
    }

    #[test]
    fn quoted_strings_keep_their_separators() {
        assert_eq!(
            param(&[r#"a/b; note="x, y; z"; version="2\"b""#], None).as_deref(),
            Some(r#"2"b"#)
        );
        assert_eq!(split_unquoted(r#"a,"b,c",d"#, ','), ["a", r#""b,c""#, "d"]);
        assert_eq!(unquote(r#""a\\b""#), r"a\b");
        assert_eq!(unquote("plain"), "plain");
    }
}
