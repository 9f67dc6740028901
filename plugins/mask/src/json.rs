//! Masking a JSON document in place: the text is copied as it is (order of
//! members, white space, number formatting) except for the values that
//! change, so a document with nothing to mask comes out byte for byte.
//!
//! - A value at a configured path is replaced, whatever its type, by the
//!   replacement text as a JSON string.
//! - A string value is run through the detectors and, if they change it,
//!   written back as a JSON string (escaped as needed).
//! - A number that is a card number becomes a JSON string with the masked
//!   digits, e.g. `4111111111111111` -> `"************1111"`.
//! - Object keys are never changed.

use crate::detect::Detectors;
use portcullis_plugin_kit::path::{JsonPath, Step};

/// How deep the scanner goes into nested arrays and objects, which bounds
/// its recursion (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// The document is not the JSON the scanner expects, or nests deeper than
/// [`MAX_DEPTH`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// What the JSON masking needs.
pub(crate) struct JsonRules<'a> {
    /// Values replaced whole.
    pub(crate) paths: &'a [JsonPath],
    /// What replaces them.
    pub(crate) replacement: &'a str,
    /// Applied to every string (and card-like number) elsewhere.
    pub(crate) detectors: &'a Detectors,
}

/// `doc` with its sensitive values masked, `Ok(None)` if nothing changed,
/// or `Err` if `doc` is not one JSON value (with surrounding white space)
/// or nests deeper than [`MAX_DEPTH`].
pub(crate) fn mask_json(doc: &str, rules: &JsonRules<'_>) -> Result<Option<String>, Malformed> {
    // Checked whole first: the scanner below then only meets valid JSON.
    // (This check does not limit nesting; the scanner does.)
    serde_json::from_str::<serde::de::IgnoredAny>(doc).map_err(|_| Malformed)?;
    let mut scanner = Scanner {
        src: doc,
        pos: 0,
        out: String::with_capacity(doc.len()),
        path: Vec::new(),
        changed: false,
        rules,
    };
    scanner.ws();
    scanner.value()?;
    scanner.ws();
    if scanner.pos != doc.len() {
        return Err(Malformed);
    }
    Ok(scanner.changed.then_some(scanner.out))
}

struct Scanner<'a, 'r> {
    src: &'a str,
    pos: usize,
    out: String,
    /// Where the scanner is in the document.
    path: Vec<Step>,
    changed: bool,
    rules: &'r JsonRules<'r>,
}

impl Scanner<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    /// Copies the source from `pos` to `end` and moves there.
    fn copy_to(&mut self, end: usize) -> Result<(), Malformed> {
        let text = self.src.get(self.pos..end).ok_or(Malformed)?;
        self.out.push_str(text);
        self.pos = end;
        Ok(())
    }

    /// Writes `text` as a JSON string in place of the source up to `end`.
    fn replace_to(&mut self, end: usize, text: &str) -> Result<(), Malformed> {
        self.out.push_str(&quote(text)?);
        self.pos = end;
        self.changed = true;
        Ok(())
    }

    /// Copies one expected structural byte.
    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.peek() != Some(byte) {
            return Err(Malformed);
        }
        self.copy_to(self.pos + 1)
    }

    /// Copies white space.
    fn ws(&mut self) {
        let rest = &self.src.as_bytes()[self.pos.min(self.src.len())..];
        let n = rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        let end = self.pos + n;
        self.out
            .push_str(self.src.get(self.pos..end).unwrap_or_default());
        self.pos = end;
    }

    fn value(&mut self) -> Result<(), Malformed> {
        if self.path.len() > MAX_DEPTH {
            return Err(Malformed);
        }
        if self.rules.paths.iter().any(|p| p.matches(&self.path)) {
            let end = self.value_end()?;
            return self.replace_to(end, self.rules.replacement);
        }
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => {
                let end = self.string_end()?;
                let literal = self.src.get(self.pos..end).ok_or(Malformed)?;
                let text: String = serde_json::from_str(literal).map_err(|_| Malformed)?;
                match self.rules.detectors.mask_text(&text) {
                    Some(masked) => self.replace_to(end, &masked),
                    None => self.copy_to(end),
                }
            }
            Some(_) => {
                let end = self.scalar_end();
                let token = self.src.get(self.pos..end).ok_or(Malformed)?;
                match self.rules.detectors.mask_number(token) {
                    Some(masked) => self.replace_to(end, &masked),
                    None => self.copy_to(end),
                }
            }
            None => Err(Malformed),
        }
    }

    fn object(&mut self) -> Result<(), Malformed> {
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            return self.expect(b'}');
        }
        loop {
            self.ws();
            let end = self.string_end()?;
            let literal = self.src.get(self.pos..end).ok_or(Malformed)?;
            let key: String = serde_json::from_str(literal).map_err(|_| Malformed)?;
            self.copy_to(end)?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            self.path.push(Step::Key(key));
            let result = self.value();
            self.path.pop();
            result?;
            self.ws();
            match self.peek() {
                Some(b',') => self.expect(b',')?,
                Some(b'}') => return self.expect(b'}'),
                _ => return Err(Malformed),
            }
        }
    }

    fn array(&mut self) -> Result<(), Malformed> {
        self.expect(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            return self.expect(b']');
        }
        let mut index = 0;
        loop {
            self.ws();
            self.path.push(Step::Index(index));
            let result = self.value();
            self.path.pop();
            result?;
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.expect(b',')?,
                Some(b']') => return self.expect(b']'),
                _ => return Err(Malformed),
            }
        }
    }

    /// The end (exclusive) of the string literal at `pos`.
    fn string_end(&self) -> Result<usize, Malformed> {
        string_end_at(self.src.as_bytes(), self.pos)
    }

    /// The end of the number, `true`, `false` or `null` at `pos`.
    fn scalar_end(&self) -> usize {
        let bytes = self.src.as_bytes();
        let mut end = self.pos;
        while bytes
            .get(end)
            .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
        {
            end += 1;
        }
        end
    }

    /// The end of the value at `pos`, whatever it is.
    fn value_end(&self) -> Result<usize, Malformed> {
        let bytes = self.src.as_bytes();
        match bytes.get(self.pos) {
            Some(b'"') => self.string_end(),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                let mut i = self.pos;
                while let Some(&b) = bytes.get(i) {
                    match b {
                        b'"' => {
                            i = string_end_at(bytes, i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1).ok_or(Malformed)?;
                            if depth == 0 {
                                return Ok(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                Err(Malformed)
            }
            Some(_) => Ok(self.scalar_end()),
            None => Err(Malformed),
        }
    }
}

/// The end (exclusive) of the string literal that starts at `start`.
fn string_end_at(bytes: &[u8], start: usize) -> Result<usize, Malformed> {
    if bytes.get(start) != Some(&b'"') {
        return Err(Malformed);
    }
    let mut i = start + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(Malformed)
}

/// `text` as a JSON string literal.
fn quote(text: &str) -> Result<String, Malformed> {
    serde_json::to_string(text).map_err(|_| Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::EmailMode;

    fn detectors() -> Detectors {
        Detectors::new(true, 4, EmailMode::Partial, Vec::new(), '*').expect("detectors")
    }

    fn mask(doc: &str, paths: &[&str]) -> Result<Option<String>, Malformed> {
        let paths: Vec<JsonPath> = paths
            .iter()
            .map(|p| JsonPath::parse(p).expect("path"))
            .collect();
        let detectors = detectors();
        mask_json(
            doc,
            &JsonRules {
                paths: &paths,
                replacement: "[REDACTED]",
                detectors: &detectors,
            },
        )
    }

    #[test]
    fn strings_are_masked_and_the_rest_is_kept_as_written() {
        let doc = "{ \"card\" : \"4111 1111 1111 1111\",\n  \"n\": 1.50e3, \"ok\": [true, null],\n  \"who\": \"jane@example.com\" }";
        assert_eq!(
            mask(doc, &[]),
            Ok(Some(
                "{ \"card\" : \"**** **** **** 1111\",\n  \"n\": 1.50e3, \"ok\": [true, null],\n  \"who\": \"j***@example.com\" }".to_owned()
            ))
        );
    }

    #[test]
    fn nothing_to_mask_is_none() {
        assert_eq!(
            mask(r#"{"a":[1,2,{"b":"c"}],"z":"4111111111111112"}"#, &[]),
            Ok(None)
        );
        assert_eq!(mask("  42 ", &[]), Ok(None));
    }

    #[test]
    fn card_numbers_as_numbers_become_strings() {
        assert_eq!(
            mask(r#"{"pan":4111111111111111,"ts":1700000000003}"#, &[]),
            Ok(Some(
                r#"{"pan":"************1111","ts":1700000000003}"#.to_owned()
            ))
        );
        assert_eq!(
            mask("[5555555555554444]", &[]),
            Ok(Some(r#"["************4444"]"#.to_owned()))
        );
    }

    #[test]
    fn paths_replace_whole_values_of_any_type() {
        let doc = r#"{"user":{"ssn":"123-45-6789","pin":1234,"addr":{"zip":"x"},"name":"Al"},
            "items":[{"card":{"n":1}},{"card":[1,"}"]},{"other":1}],"ssn":"top"}"#;
        let out = mask(
            doc,
            &["$.user.ssn", "user.pin", "user.addr", "items[*].card"],
        )
        .expect("valid")
        .expect("changed");
        let value: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(
            value,
            serde_json::json!({"user":{"ssn":"[REDACTED]","pin":"[REDACTED]","addr":"[REDACTED]","name":"Al"},
                "items":[{"card":"[REDACTED]"},{"card":"[REDACTED]"},{"other":1}],"ssn":"top"})
        );
    }

    #[test]
    fn escapes_survive() {
        let doc = r#"{"k\"ey":"mail \"jane@example.com\" \u00e9\\","x":"\ud83d\ude00"}"#;
        let out = mask(doc, &[]).expect("valid").expect("changed");
        assert_eq!(
            out,
            r#"{"k\"ey":"mail \"j***@example.com\" é\\","x":"\ud83d\ude00"}"#
        );
        let key_path = mask(r#"{"a.b":{"c":1}}"#, &[r#"["a.b"].c"#]).expect("valid");
        assert_eq!(key_path.as_deref(), Some(r#"{"a.b":{"c":"[REDACTED]"}}"#));
    }

    #[test]
    fn invalid_json_is_refused() {
        for doc in ["{", "{\"a\":1,}", "[1] [2]", "", "nul", "{\"a\" 1}"] {
            assert_eq!(mask(doc, &[]), Err(Malformed), "{doc}");
        }
    }

    #[test]
    fn deep_documents_are_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(mask(&deep, &[]), Err(Malformed));
        let ok = format!("{}\"4111111111111111\"{}", "[".repeat(100), "]".repeat(100));
        assert!(mask(&ok, &[]).expect("100 levels are fine").is_some());
    }
}
