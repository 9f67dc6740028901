//! Checks on the HTTP syntax a plugin configuration names.

/// Whether `b` is a `tchar` of RFC 9110: a byte a header name or a method
/// may contain.
///
/// ```
/// use portcullis_plugin_kit::http::is_token_byte;
///
/// assert!("X-Request-Id".bytes().all(is_token_byte));
/// assert!(!"X Request".bytes().all(is_token_byte));
/// ```
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `value` can be sent as a header value: no control characters
/// other than tab (so no CR or LF that would end the field).
///
/// ```
/// use portcullis_plugin_kit::http::is_header_value;
///
/// assert!(is_header_value("admin,ops\tx"));
/// assert!(!is_header_value("acme\r\nx-admin: 1"));
/// ```
pub fn is_header_value(value: &str) -> bool {
    !value.chars().any(|c| c.is_control() && c != '\t')
}

/// `value` as a quoted-string of RFC 9110 §5.6.4 (also an sf-string of
/// RFC 9651 §3.3.3 when `value` is printable ASCII): in double quotes, with
/// `"` and `\` escaped by a backslash.
///
/// ```
/// use portcullis_plugin_kit::http::quoted_string;
///
/// assert_eq!(quoted_string(r#"say "hi"\"#), r#""say \"hi\"\\""#);
/// ```
pub fn quoted_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bytes() {
        for name in ["x-api-key", "Content-Type", "PATCH", "!#$%&'*+-.^_`|~09az"] {
            assert!(name.bytes().all(is_token_byte), "{name}");
        }
        for b in [
            b' ', b':', b'"', b'(', b'/', b'\t', b'\n', 0, 0x7f, 0x80, 0xff,
        ] {
            assert!(!is_token_byte(b), "{b:#x}");
        }
    }

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        assert_eq!(quoted_string(""), r#""""#);
        assert_eq!(quoted_string("portcullis"), r#""portcullis""#);
        assert_eq!(quoted_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn header_values() {
        assert!(is_header_value(""));
        assert!(is_header_value("a b\tc é"));
        for bad in ["a\rb", "a\nb", "\0", "\u{7f}", "\u{85}"] {
            assert!(!is_header_value(bad), "{bad:?}");
        }
    }
}
