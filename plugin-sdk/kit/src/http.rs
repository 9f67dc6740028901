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
}
