//! Detectors: card numbers, e-mail addresses and configured patterns, as
//! plain functions of text.

use regex::Regex;

/// How e-mail addresses are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EmailMode {
    /// `jane@example.com` -> `j***@example.com`: the domain stays.
    #[default]
    Partial,
    /// `jane@example.com` -> `***@***`.
    Full,
    /// Addresses are left alone.
    Off,
}

/// The detectors of one configuration, applied in the order: card
/// numbers, e-mail addresses, patterns (in configuration order).
#[derive(Debug)]
pub(crate) struct Detectors {
    /// Whether card numbers are masked.
    pub(crate) cards: bool,
    /// How many trailing digits of a card number stay visible (0 to 4).
    pub(crate) card_keep_last: usize,
    /// How e-mail addresses are masked.
    pub(crate) emails: EmailMode,
    /// Extra patterns with their replacement templates.
    pub(crate) patterns: Vec<(Regex, String)>,
    /// The character that stands for a masked character.
    pub(crate) mask_char: char,
    /// Runs of digits separated by at most one space or dash.
    digit_runs: Regex,
    /// E-mail addresses.
    email: Regex,
}

/// Shortest and longest card numbers (ISO/IEC 7812).
const CARD_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

impl Detectors {
    /// Detectors with the built-in regexes compiled.
    pub(crate) fn new(
        cards: bool,
        card_keep_last: usize,
        emails: EmailMode,
        patterns: Vec<(Regex, String)>,
        mask_char: char,
    ) -> Result<Self, String> {
        let built_in = |text: &str| {
            Regex::new(text).map_err(|e| format!("internal: built-in regex does not compile: {e}"))
        };
        Ok(Detectors {
            cards,
            card_keep_last,
            emails,
            patterns,
            mask_char,
            digit_runs: built_in(r"[0-9](?:[ -]?[0-9])*")?,
            email: built_in(
                r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}",
            )?,
        })
    }

    /// Whether any detector is on.
    pub(crate) fn any(&self) -> bool {
        self.cards || self.emails != EmailMode::Off || !self.patterns.is_empty()
    }

    /// `text` with everything the detectors find masked, or `None` when
    /// they find nothing.
    pub(crate) fn mask_text(&self, text: &str) -> Option<String> {
        let mut current: Option<String> = None;
        if self.cards
            && let Some(masked) = self.mask_cards(current.as_deref().unwrap_or(text))
        {
            current = Some(masked);
        }
        if self.emails != EmailMode::Off
            && let Some(masked) = self.mask_emails(current.as_deref().unwrap_or(text))
        {
            current = Some(masked);
        }
        for (regex, replace) in &self.patterns {
            let input = current.as_deref().unwrap_or(text);
            if regex.is_match(input) {
                current = Some(regex.replace_all(input, replace.as_str()).into_owned());
            }
        }
        current
    }

    /// The masked form of a JSON number token that is a card number (an
    /// integer of 13 to 19 digits that passes the checks of
    /// [`is_card_number`]), or `None`.
    pub(crate) fn mask_number(&self, token: &str) -> Option<String> {
        (self.cards
            && token.bytes().all(|b| b.is_ascii_digit())
            && is_card_number(token.as_bytes()))
        .then(|| mask_digits(token, self.card_keep_last, self.mask_char))
    }

    /// Masks the card numbers in `text`.
    ///
    /// A card number is a run of 13 to 19 digits, possibly grouped by single
    /// spaces or dashes (`4111 1111 1111 1111`, `4111-1111-1111-1111`),
    /// not touching a letter, digit or `_` on either side, that passes
    /// [`is_card_number`]. Inside a longer run of groups (`order 12 4111
    /// 1111 1111 1111`) the longest card made of whole groups is found.
    fn mask_cards(&self, text: &str) -> Option<String> {
        let mut out = String::new();
        let mut copied = 0;
        for run in self.digit_runs.find_iter(text) {
            for (start, end) in cards_in_run(text, run.start(), run.end()) {
                out.push_str(&text[copied..start]);
                out.push_str(&mask_digits(
                    &text[start..end],
                    self.card_keep_last,
                    self.mask_char,
                ));
                copied = end;
            }
        }
        if copied == 0 {
            return None;
        }
        out.push_str(&text[copied..]);
        Some(out)
    }

    /// Masks the e-mail addresses in `text`.
    fn mask_emails(&self, text: &str) -> Option<String> {
        if !self.email.is_match(text) {
            return None;
        }
        let mask: String = std::iter::repeat_n(self.mask_char, 3).collect();
        let masked = self.email.replace_all(text, |caps: &regex::Captures<'_>| {
            let address = caps.get(0).map_or("", |m| m.as_str());
            let (local, domain) = address.split_once('@').unwrap_or((address, ""));
            match self.emails {
                EmailMode::Partial => {
                    let first: String = local.chars().take(1).collect();
                    format!("{first}{mask}@{domain}")
                }
                EmailMode::Full | EmailMode::Off => format!("{mask}@{mask}"),
            }
        });
        Some(masked.into_owned())
    }
}

/// The byte ranges of the card numbers in the run `text[start..end]` of
/// digits and single separators.
fn cards_in_run(text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    // The run's groups of digits, as byte ranges.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = start;
    while i < end {
        let group_start = i;
        while i < end && bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        groups.push((group_start, i));
        i += 1; // the separator
    }
    let free = |at: Option<char>| at.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
    let mut cards = Vec::new();
    let mut first = 0;
    while first < groups.len() {
        let mut found = None;
        let mut digits = String::new();
        let mut candidates = Vec::new();
        for (last, &(s, e)) in groups.iter().enumerate().skip(first) {
            digits.push_str(&text[s..e]);
            if digits.len() > *CARD_DIGITS.end() {
                break;
            }
            candidates.push((last, digits.clone()));
        }
        let (group_start, _) = groups[first];
        if free(text[..group_start].chars().next_back()) {
            for (last, digits) in candidates.into_iter().rev() {
                let (_, group_end) = groups[last];
                if free(text[group_end..].chars().next()) && is_card_number(digits.as_bytes()) {
                    found = Some(last);
                    cards.push((group_start, group_end));
                    break;
                }
            }
        }
        first = found.map_or(first + 1, |last| last + 1);
    }
    cards
}

/// Whether `digits` (ASCII digits only) looks like a payment card number:
/// 13 to 19 digits, a first digit from 2 to 6 (the ranges of Mastercard,
/// American Express, Diners, JCB, Visa, Discover, UnionPay and Maestro;
/// this leaves out millisecond timestamps and most other long numbers),
/// and a valid Luhn check digit.
pub(crate) fn is_card_number(digits: &[u8]) -> bool {
    CARD_DIGITS.contains(&digits.len())
        && matches!(digits.first(), Some(b'2'..=b'6'))
        && luhn_valid(digits)
}

/// The Luhn (mod 10) check of a string of ASCII digits.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        if !d.is_ascii_digit() {
            return false;
        }
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// `text` with every digit but the last `keep_last` replaced by
/// `mask_char`; separators stay.
pub(crate) fn mask_digits(text: &str, keep_last: usize, mask_char: char) -> String {
    let total = text.chars().filter(char::is_ascii_digit).count();
    let mut seen = 0;
    text.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen + keep_last <= total {
                    return mask_char;
                }
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detectors(emails: EmailMode, patterns: &[(&str, &str)]) -> Detectors {
        let patterns = patterns
            .iter()
            .map(|(r, t)| (Regex::new(r).expect("regex"), (*t).to_owned()))
            .collect();
        Detectors::new(true, 4, emails, patterns, '*').expect("built-in regexes compile")
    }

    fn mask(text: &str) -> String {
        detectors(EmailMode::Partial, &[])
            .mask_text(text)
            .unwrap_or_else(|| text.to_owned())
    }

    #[test]
    fn luhn() {
        for good in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "79927398713",
            "0",
        ] {
            assert!(luhn_valid(good.as_bytes()), "{good}");
        }
        for bad in ["4111111111111112", "79927398710", "", "41x1"] {
            assert!(!luhn_valid(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn card_numbers_need_length_prefix_and_luhn() {
        assert!(is_card_number(b"4111111111111111"));
        assert!(is_card_number(b"378282246310005"), "Amex, 15 digits");
        assert!(is_card_number(b"6011111111111117"), "Discover");
        assert!(is_card_number(b"2223003122003222"), "Mastercard 2-series");
        assert!(!is_card_number(b"4111111111111112"), "bad check digit");
        assert!(!is_card_number(b"79927398713"), "too short");
        assert!(!is_card_number(b"1700000000003"), "a millisecond timestamp");
        assert!(!is_card_number(b"41111111111111111111"), "20 digits");
    }

    #[test]
    fn cards_keep_their_last_four_and_separators() {
        assert_eq!(mask("4111111111111111"), "************1111");
        assert_eq!(
            mask("card 4111 1111 1111 1111, thanks"),
            "card **** **** **** 1111, thanks"
        );
        assert_eq!(mask("4111-1111-1111-1111"), "****-****-****-1111");
        assert_eq!(mask("amex 3782 822463 10005."), "amex **** ****** *0005.");
        assert_eq!(
            mask("a 5555555555554444 and 4111111111111111"),
            "a ************4444 and ************1111"
        );
    }

    #[test]
    fn numbers_that_are_not_cards_stay() {
        for text in [
            "4111111111111112",
            "order 1700000000003",
            "id_4111111111111111",
            "x4111111111111111",
            "41111111111111111",
            "4111  1111 1111 1111",
            "phone +1 555-123-4567",
        ] {
            assert_eq!(mask(text), text);
        }
    }

    #[test]
    fn a_card_inside_a_longer_run_of_groups_is_found() {
        assert_eq!(
            mask("ref 12 4111 1111 1111 1111 2024"),
            "ref 12 **** **** **** 1111 2024"
        );
        assert_eq!(
            mask("4111 1111 1111 1111 5555 5555 5555 4444"),
            "**** **** **** 1111 **** **** **** 4444"
        );
    }

    #[test]
    fn keep_last_and_mask_char() {
        assert_eq!(
            mask_digits("4111 1111 1111 1111", 0, '#'),
            "#### #### #### ####"
        );
        assert_eq!(mask_digits("4111111111111111", 2, 'x'), "xxxxxxxxxxxxxx11");
    }

    #[test]
    fn emails_partial_and_full() {
        assert_eq!(
            mask("write to jane.doe+x@mail.example.com now"),
            "write to j***@mail.example.com now"
        );
        let full = detectors(EmailMode::Full, &[]);
        assert_eq!(
            full.mask_text("a@b.io, c@d.org").as_deref(),
            Some("***@***, ***@***")
        );
        let off = detectors(EmailMode::Off, &[]);
        assert_eq!(off.mask_text("a@b.io"), None);
        assert_eq!(mask("not@an-address"), "not@an-address");
        assert_eq!(mask("user@localhost"), "user@localhost");
    }

    #[test]
    fn patterns_apply_with_captures_after_the_built_ins() {
        let d = detectors(
            EmailMode::Partial,
            &[
                (r"\b(\d{3})-(\d{2})-(\d{4})\b", "***-**-$3"),
                ("secret", "[hidden]"),
            ],
        );
        assert_eq!(
            d.mask_text("ssn 123-45-6789, a secret").as_deref(),
            Some("ssn ***-**-6789, a [hidden]")
        );
        assert_eq!(d.mask_text("nothing here"), None);
    }

    #[test]
    fn json_number_tokens() {
        let d = detectors(EmailMode::Off, &[]);
        assert_eq!(
            d.mask_number("4111111111111111").as_deref(),
            Some("************1111")
        );
        assert_eq!(d.mask_number("1700000000003"), None);
        assert_eq!(d.mask_number("4111111111111111.0"), None);
        assert_eq!(d.mask_number("-4111111111111111"), None);
        assert_eq!(d.mask_number("42"), None);
    }

    #[test]
    fn unicode_text_is_safe() {
        assert_eq!(mask("é4111111111111111"), "é4111111111111111");
        assert_eq!(mask("→ 4111111111111111 ←"), "→ ************1111 ←");
        assert_eq!(mask("ü@ä.de 日本"), "ü@ä.de 日本");
    }
}
