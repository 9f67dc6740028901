//! A small path syntax for JSON documents.
//!
//! ```text
//! user.email          the key `email` of the object at the key `user`
//! $.user.email        the same; a leading `$` (the document) is optional
//! items[0].sku        the key `sku` of the first element of `items`
//! items[*].card       the key `card` of every element of `items`
//! users.*.email       the key `email` of every member of the object `users`
//! $["odd.key"].x      a key with `.`, `[`, `]`, `"` or `\` in it, quoted
//! ```
//!
//! A key is any run of characters other than `.`, `[` and `]`; the key `*`
//! alone means every member of an object (write `["*"]` for a key named
//! `*`). In a quoted key, `\"` and `\\` stand for `"` and `\`. A path
//! selects at least one step: `$` alone (the whole document) is refused.
//!
//! ```
//! use portcullis_plugin_kit::path::{JsonPath, Segment, Step};
//!
//! let path = JsonPath::parse("$.items[*].card").expect("valid");
//! assert_eq!(path.to_string(), "$.items[*].card");
//! assert_eq!(path.segments()[1], Segment::AnyIndex);
//! let at = [Step::Key("items".into()), Step::Index(3), Step::Key("card".into())];
//! assert!(path.matches(&at));
//! assert!(JsonPath::parse("items[x]").is_err());
//! ```

use std::fmt;

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// The member with this key of an object.
    Key(String),
    /// Every member of an object (`.*`).
    AnyKey,
    /// The element at this index of an array (`[3]`).
    Index(usize),
    /// Every element of an array (`[*]`).
    AnyIndex,
}

/// A parsed path, e.g. `items[*].card`; it displays as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    /// The path as written in the configuration, for messages.
    text: String,
    /// Its steps, at least one.
    segments: Vec<Segment>,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// Parses `text`, or says what is wrong with it (a message that starts
    /// with the path, quoted in backticks).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut rest, mut bare_key_allowed) = match text.strip_prefix('$') {
            Some(rest) => (rest, false),
            None => (text, true),
        };
        let mut segments = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let (segment, after) = bracket(after, text)?;
                segments.push(segment);
                rest = after;
            } else {
                let after = match rest.strip_prefix('.') {
                    Some(after) => after,
                    None if bare_key_allowed => rest,
                    None => {
                        return Err(format!("`{text}`: expected `.` or `[` before `{rest}`"));
                    }
                };
                let end = after.find(['.', '[', ']']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() {
                    return Err(format!("`{text}`: empty key"));
                }
                segments.push(if key == "*" {
                    Segment::AnyKey
                } else {
                    Segment::Key(key.to_owned())
                });
                rest = &after[end..];
                if rest.starts_with(']') {
                    return Err(format!("`{text}`: unexpected `]`"));
                }
            }
            bare_key_allowed = false;
        }
        if segments.is_empty() {
            return Err(format!(
                "`{text}`: the path must name at least one key or index"
            ));
        }
        Ok(JsonPath {
            text: text.to_owned(),
            segments,
        })
    }

    /// Its steps (at least one).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the path selects the value at `at`: as many steps, each
    /// matching its segment (a key a `Key` or `AnyKey`, an index an `Index`
    /// or `AnyIndex`).
    pub fn matches(&self, at: &[Step]) -> bool {
        self.segments.len() == at.len()
            && self
                .segments
                .iter()
                .zip(at)
                .all(|(segment, step)| match (segment, step) {
                    (Segment::Key(k), Step::Key(s)) => k == s,
                    (Segment::AnyKey, Step::Key(_)) | (Segment::AnyIndex, Step::Index(_)) => true,
                    (Segment::Index(i), Step::Index(s)) => i == s,
                    _ => false,
                })
    }
}

/// One step of a concrete location in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A member of an object.
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// Parses the inside of `[...]` (after the `[`): `*`, an index, or a
/// quoted key. Returns the segment and what follows the `]`.
fn bracket<'a>(after: &'a str, text: &str) -> Result<(Segment, &'a str), String> {
    if let Some(quoted) = after.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, c @ ('"' | '\\'))) => key.push(c),
                    _ => {
                        return Err(format!(
                            "`{text}`: in a quoted key, `\\` must be followed by `\"` or `\\`"
                        ));
                    }
                },
                '"' => {
                    let rest = &quoted[i + 1..];
                    let Some(rest) = rest.strip_prefix(']') else {
                        return Err(format!("`{text}`: expected `]` after a quoted key"));
                    };
                    return Ok((Segment::Key(key), rest));
                }
                c => key.push(c),
            }
        }
        return Err(format!("`{text}`: unterminated quoted key"));
    }
    let Some(end) = after.find(']') else {
        return Err(format!("`{text}`: `[` without `]`"));
    };
    let inside = &after[..end];
    let segment = if inside == "*" {
        Segment::AnyIndex
    } else if !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_digit()) {
        Segment::Index(
            inside
                .parse()
                .map_err(|_| format!("`{text}`: index `{inside}` is too large"))?,
        )
    } else {
        return Err(format!(
            "`{text}`: `[{inside}]` must be `[*]`, an index such as `[0]`, or a quoted key such as `[\"a.b\"]`"
        ));
    };
    Ok((segment, &after[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(text: &str) -> Vec<Segment> {
        JsonPath::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .segments
    }

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_owned())
    }

    #[test]
    fn keys_indexes_and_wildcards() {
        assert_eq!(segments("user.email"), [key("user"), key("email")]);
        assert_eq!(segments("$.user.email"), [key("user"), key("email")]);
        assert_eq!(segments("ssn"), [key("ssn")]);
        assert_eq!(segments(".ssn"), [key("ssn")], "a leading `.` is allowed");
        assert_eq!(
            segments("items[*].card"),
            [key("items"), Segment::AnyIndex, key("card")]
        );
        assert_eq!(
            segments("$.items[2].sku"),
            [key("items"), Segment::Index(2), key("sku")]
        );
        assert_eq!(
            segments("users.*.email"),
            [key("users"), Segment::AnyKey, key("email")]
        );
        assert_eq!(segments("$[0]"), [Segment::Index(0)]);
        assert_eq!(segments("[*].id"), [Segment::AnyIndex, key("id")]);
        assert_eq!(segments("matrix[1][2]").len(), 3);
    }

    #[test]
    fn quoted_keys() {
        assert_eq!(
            segments(r#"$["a.b"]["*"].c"#),
            [key("a.b"), key("*"), key("c")]
        );
        assert_eq!(segments(r#"["say \"hi\" \\o/"]"#), [key(r#"say "hi" \o/"#)]);
        assert_eq!(segments(r#"x["]"]"#), [key("x"), key("]")]);
    }

    #[test]
    fn matching() {
        let at = |steps: &[&str]| -> Vec<Step> {
            steps
                .iter()
                .map(|s| {
                    s.parse()
                        .map_or_else(|_| Step::Key((*s).to_owned()), Step::Index)
                })
                .collect()
        };
        let path = JsonPath::parse("items[*].card").expect("valid");
        assert!(path.matches(&at(&["items", "0", "card"])));
        assert!(path.matches(&at(&["items", "7", "card"])));
        assert!(!path.matches(&at(&["items", "0"])));
        assert!(!path.matches(&at(&["items", "0", "card", "n"])));
        assert!(
            !path.matches(&at(&["items", "x", "card"])),
            "`[*]` is for arrays"
        );
        let any = JsonPath::parse("users.*.email").expect("valid");
        assert!(any.matches(&at(&["users", "bob", "email"])));
        assert!(
            !any.matches(&at(&["users", "3", "email"])),
            "`.*` is for objects"
        );
        let exact = JsonPath::parse("$.a[1]").expect("valid");
        assert!(exact.matches(&at(&["a", "1"])) && !exact.matches(&at(&["a", "2"])));
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        for (text, expected) in [
            ("", "must name at least one key"),
            ("$", "must name at least one key"),
            ("$user", "expected `.` or `[`"),
            ("user..email", "empty key"),
            ("user.", "empty key"),
            ("items[", "`[` without `]`"),
            ("items[-1]", "must be `[*]`"),
            ("items[]", "must be `[*]`"),
            ("items[a]", "must be `[*]`"),
            ("items]x", "unexpected `]`"),
            (r#"["open"#, "unterminated quoted key"),
            (r#"["a"x"#, "expected `]` after a quoted key"),
            (r#"["a\n"]"#, "must be followed by"),
            ("items[99999999999999999999999]", "too large"),
        ] {
            let error = JsonPath::parse(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.starts_with(&format!("`{text}`")), "{error}");
        }
    }
}
