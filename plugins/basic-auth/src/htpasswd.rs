//! Reading htpasswd text: `user:hash` lines.

/// One `user:hash` line of an htpasswd text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    /// The line number, from 1.
    pub(crate) number: usize,
    /// The user name, before the first `:`.
    pub(crate) username: &'a str,
    /// The hash, after the first `:`, with surrounding spaces removed.
    pub(crate) hash: &'a str,
}

/// Splits htpasswd text into its entries. Blank lines and lines starting
/// with `#` are skipped; `\r\n` line ends are accepted. A line without a
/// `:` or with an empty user name is an error naming its number.
pub(crate) fn parse(text: &str) -> (Vec<Line<'_>>, Vec<String>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((username, hash)) if !username.trim().is_empty() => lines.push(Line {
                number,
                username: username.trim(),
                hash: hash.trim(),
            }),
            Some(_) => problems.push(format!("htpasswd line {number}: the user name is empty")),
            None => problems.push(format!(
                "htpasswd line {number}: expected `user:hash`, found no `:`"
            )),
        }
    }
    (lines, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_blank_lines() {
        let text = "# users\r\nalice:$2y$04$abc\r\n\n  bob : $argon2id$x:y \n#carol:$2y$\n";
        let (lines, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            lines,
            [
                Line {
                    number: 2,
                    username: "alice",
                    hash: "$2y$04$abc"
                },
                Line {
                    number: 4,
                    username: "bob",
                    hash: "$argon2id$x:y"
                },
            ]
        );
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        let (lines, problems) = parse("alice:$2y$\nno-colon\n:$2y$04$x\n");
        assert_eq!(lines.len(), 1);
        assert_eq!(
            problems,
            [
                "htpasswd line 2: expected `user:hash`, found no `:`",
                "htpasswd line 3: the user name is empty",
            ]
        );
    }

    #[test]
    fn empty_text_has_no_entries() {
        assert_eq!(parse(""), (Vec::new(), Vec::new()));
        assert_eq!(parse("\n# only a comment\n"), (Vec::new(), Vec::new()));
    }
}
