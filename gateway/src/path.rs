//! Request path normalisation, before routing: what the router matches,
//! what plugins see and what the upstream gets are the same path, so
//! `/public/../admin` cannot reach `/admin` past the `/admin` route's
//! plugins, and `/admin/%2e%2e/x` cannot slip past a path rule.
//!
//! Like Envoy with `normalize_path` and `merge_slashes` on and
//! `path_with_escaped_slashes_action: REJECT_REQUEST`:
//! - percent-encoded unreserved characters are decoded (`%2e` -> `.`,
//!   `%7E` -> `~`), other escapes get uppercase hex digits;
//! - runs of `/` become one;
//! - `.` and `..` segments are removed (RFC 3986, section 5.2.4); `..`
//!   never climbs above the root;
//! - an encoded slash or backslash (`%2F`, `%5C`), a raw backslash, a bad
//!   escape (`%zz`) or a control character refuses the request (400);
//! - so does a dot segment with parameters (`..;`, `.;x`): Tomcat and the
//!   servers that copy it read `/open/..;/admin` as `/admin`, a path this
//!   gateway would route as `/open/...`.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C`: servers disagree on what they mean.
    #[error("encoded slash or backslash in the path")]
    EncodedSlash,
    /// A raw `\`, which some servers read as `/`.
    #[error("backslash in the path")]
    Backslash,
    /// `%` not followed by two hexadecimal digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    /// A control character.
    #[error("control character in the path")]
    Control,
    /// `..;` or `.;...`: a dot segment some servers resolve and others do
    /// not.
    #[error("a dot segment with parameters (`..;`) in the path")]
    DotSegmentParameters,
    /// Not starting with `/`.
    #[error("the path must start with `/`")]
    NotAbsolute,
}

/// The normalised form of `path` (borrowed when it is already normal).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS *) and absolute forms never reach routing as paths.
        return if path == "*" {
            Ok(Cow::Borrowed(path))
        } else {
            Err(PathError::NotAbsolute)
        };
    }
    let decoded = decode_unreserved(path)?;
    let dot_with_parameters = decoded.split('/').any(|segment| {
        segment
            .split_once(';')
            .is_some_and(|(name, _)| name == "." || name == "..")
    });
    if dot_with_parameters {
        return Err(PathError::DotSegmentParameters);
    }
    if is_normal(&decoded) {
        return Ok(decoded);
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn is_normal(path: &str) -> bool {
    !path.contains("//")
        && !path
            .split('/')
            .skip(1)
            .any(|segment| segment == "." || segment == "..")
}

fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(PathError::Control);
    }
    if bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let hex = rest
            .get(at + 1..at + 3)
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(PathError::BadEscape)?;
        let value = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEscape)?;
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSlash),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(value));
            }
            _ => {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// RFC 3986 `remove_dot_segments`, with empty segments merged. Keeps a
/// trailing slash (and adds one after a final `.` or `..`, as the RFC does).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let mut trailing_slash = false;
    for (i, segment) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *segment {
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            "" => trailing_slash = last,
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        normalize(path).expect("valid").into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in ["/", "/api", "/api/orders/", "/a/b.c/d..e/.well-known"] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_and_double_slashes_are_resolved() {
        assert_eq!(ok("/public/../admin"), "/admin");
        assert_eq!(ok("/a/./b/../c"), "/a/c");
        assert_eq!(ok("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(ok("//api///orders"), "/api/orders");
        assert_eq!(ok("/api/orders/"), "/api/orders/");
        assert_eq!(ok("/api/.."), "/");
        assert_eq!(ok("/api/x/.."), "/api/");
        assert_eq!(ok("/api/."), "/api/");
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded_first() {
        assert_eq!(ok("/admin/%2e%2e/public"), "/public");
        assert_eq!(ok("/api/%2E%2e/admin"), "/admin");
        assert_eq!(ok("/%7Euser/%61pi"), "/~user/api");
        assert_eq!(ok("/x%20y"), "/x%20y");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for path in [
            "/open/..;/admin",
            "/open/..;x=1/admin",
            "/a/.;/b",
            "/open/%2e%2e;/admin",
        ] {
            assert_eq!(
                normalize(path),
                Err(PathError::DotSegmentParameters),
                "{path}"
            );
        }
        assert_eq!(
            ok("/a;v=1/b"),
            "/a;v=1/b",
            "parameters on other segments stay"
        );
        assert_eq!(ok("/a/..x;/b"), "/a/..x;/b");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%zzb"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%+1b"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a\u{7f}"), Err(PathError::Control));
        assert_eq!(normalize("api"), Err(PathError::NotAbsolute));
        assert_eq!(ok("*"), "*");
    }
}
