//! Turning a request path into the decoded segments that patterns match.
//!
//! The gateway normalises the path before routing (dot segments and `%2e`
//! resolved, `//` merged) and refuses encoded slashes, so this mostly sees
//! clean paths. It still refuses any path an upstream could read as a
//! different path than the plugin does, rather than guessing: what the
//! gateway leaves alone (`..;x` segments) and what an earlier plugin (a
//! rewrite) may have produced, so a caller cannot step out of a pattern
//! (`/tenants/acme/../globex/...`, `/tenants/acme%2F..%2Fglobex/...`).

use std::fmt;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// An empty segment (`//`) other than one trailing slash.
    EmptySegment,
    /// A `.` or `..` segment, raw or percent-encoded (also `..;x`).
    DotSegment,
    /// A `%` not followed by two hexadecimal digits.
    BadEscape,
    /// A `\`, an encoded `/` or `\`, or a control character.
    Separator,
    /// A segment that is not UTF-8 once decoded.
    NotUtf8,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with `/`",
            PathError::EmptySegment => "the path has an empty segment (`//`)",
            PathError::DotSegment => "the path has a `.` or `..` segment",
            PathError::BadEscape => "the path has a `%` that is not followed by two hex digits",
            PathError::Separator => {
                "the path has a `\\`, an encoded `/` or `\\`, or a control character"
            }
            PathError::NotUtf8 => "the path is not UTF-8 once percent-decoded",
        })
    }
}

/// The percent-decoded segments of `path` (a path without its query).
///
/// `/` has no segments; one trailing slash is ignored (`/users/` is
/// `["users"]`). Refused: empty segments elsewhere, `.` and `..` segments
/// (also when encoded, and with a `;` parameter as in `..;x`), invalid
/// escapes, `\`, encoded `/` and `\`, control characters and segments that
/// are not UTF-8 once decoded.
pub(crate) fn segments(path: &str) -> Result<Vec<String>, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/').map(decode_segment).collect()
}

/// One segment, percent-decoded and checked.
fn decode_segment(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Err(PathError::EmptySegment);
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut input = raw.bytes();
    while let Some(b) = input.next() {
        let byte = if b == b'%' {
            let high = input.next().and_then(hex_value);
            let low = input.next().and_then(hex_value);
            match (high, low) {
                (Some(high), Some(low)) => high << 4 | low,
                _ => return Err(PathError::BadEscape),
            }
        } else {
            b
        };
        if byte == b'/' || byte == b'\\' || byte.is_ascii_control() {
            return Err(PathError::Separator);
        }
        bytes.push(byte);
    }
    let segment = String::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
    let before_params = segment.split(';').next().unwrap_or_default();
    if before_params == "." || before_params == ".." {
        return Err(PathError::DotSegment);
    }
    Ok(segment)
}

/// The value of a hexadecimal digit.
fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> Vec<String> {
        segments(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn plain_paths_split_into_segments() {
        assert_eq!(ok("/"), Vec::<String>::new());
        assert_eq!(ok("/users"), ["users"]);
        assert_eq!(ok("/users/"), ["users"], "one trailing slash is ignored");
        assert_eq!(
            ok("/tenants/acme/orders/42"),
            ["tenants", "acme", "orders", "42"]
        );
        assert_eq!(
            ok("/a;b/c.d/...x/.hidden"),
            ["a;b", "c.d", "...x", ".hidden"]
        );
    }

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(ok("/%61dmin/caf%C3%A9/a%20b"), ["admin", "café", "a b"]);
        assert_eq!(ok("/%7e%7E"), ["~~"]);
        assert_eq!(ok("/100%25"), ["100%"]);
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("users", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("//admin", PathError::EmptySegment),
            ("/a//b", PathError::EmptySegment),
            ("/a//", PathError::EmptySegment),
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/a/..", PathError::DotSegment),
            ("/a/../", PathError::DotSegment),
            ("/a/%2e%2e/b", PathError::DotSegment),
            ("/a/.%2E/b", PathError::DotSegment),
            ("/a/%2e/b", PathError::DotSegment),
            ("/a/..;x/b", PathError::DotSegment),
            ("/a/.;/b", PathError::DotSegment),
            ("/a%2Fb", PathError::Separator),
            ("/a%2fb", PathError::Separator),
            ("/a%5Cb", PathError::Separator),
            ("/a\\b", PathError::Separator),
            ("/a%00b", PathError::Separator),
            ("/a%0Ab", PathError::Separator),
            ("/a%7Fb", PathError::Separator),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/a%C3", PathError::NotUtf8),
            ("/a%FF", PathError::NotUtf8),
        ];
        for (path, expected) in cases {
            assert_eq!(segments(path), Err(expected), "{path}");
        }
    }
}
