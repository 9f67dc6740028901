//! Dates: parsing the configuration's dates (`YYYY-MM-DD` and RFC 3339
//! date-times, with the `time` crate) and writing the HTTP-dates of the
//! `Sunset` header (with `httpdate`). Every time here is UTC; there is no
//! time zone database.

use std::time::{Duration, UNIX_EPOCH};

use time::error::{Parse, ParseFromDescription, TryFromParsed};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// What a date must look like, for the error messages.
const EXPECTED: &str =
    "expected `YYYY-MM-DD` or an RFC 3339 date-time such as `2025-06-30T12:00:00Z`";

/// The last second `parse` accepts and `http_date` can write:
/// 9999-12-31T23:59:59Z.
const LAST: i64 = 253_402_300_799;

/// Parses a date of the configuration into seconds since the Unix epoch:
/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time with `Z` or an
/// offset, e.g. `2025-06-30T12:00:00Z` or `2025-06-30T14:00:00+02:00`
/// (fractions of a second are dropped; a leap second `23:59:60` at the end
/// of a month counts as `23:59:59`). From 1970-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z.
///
/// An error starts with the quoted `text` and says what was expected.
pub(crate) fn parse(text: &str) -> Result<i64, String> {
    let bad = |what: &str| format!("`{text}`: {what}");
    // A date alone is exactly `YYYY-MM-DD`: ten bytes. Anything longer is
    // a date-time, whose date and time RFC 3339 separates with `T` (any
    // case) or, in a note, a space; `time` would take any one character.
    if text.len() > 10 && !matches!(text.as_bytes()[10], b'T' | b't' | b' ') {
        return Err(bad(EXPECTED));
    }
    let parsed = if text.len() <= 10 {
        Date::parse(text, format_description!("[year]-[month]-[day]"))
            .map(|date| date.midnight().assume_utc())
    } else {
        OffsetDateTime::parse(text, &Rfc3339)
    };
    let seconds = parsed.map_err(|e| bad(problem(e)))?.unix_timestamp();
    if seconds < 0 {
        return Err(bad(if text.len() <= 10 {
            "the year must be 1970 or later"
        } else {
            "the time must not be before 1970-01-01T00:00:00Z"
        }));
    }
    if seconds > LAST {
        return Err(bad("the time must not be after 9999-12-31T23:59:59Z"));
    }
    Ok(seconds)
}

/// What is wrong, in the words of the configuration, for an error of
/// `time`'s parsers.
fn problem(error: Parse) -> &'static str {
    match error {
        Parse::TryFromParsed(TryFromParsed::ComponentRange(range)) => match range.name() {
            "month" => "the month must be 01 to 12",
            "day" => "no such day in that month",
            "hour" | "minute" | "second" => {
                "the time must be 00:00:00 to 23:59:59 (23:59:60 only as a leap second at the end of a month)"
            }
            "offset hour" | "offset minute" | "offset second" => {
                "the offset must be `+hh:mm` or `-hh:mm`, hours 00 to 23 and minutes 00 to 59"
            }
            _ => EXPECTED,
        },
        Parse::ParseFromDescription(ParseFromDescription::InvalidComponent(component)) => {
            match component {
                "month" => "the month must be 01 to 12 (`YYYY-MM-DD`)",
                "offset hour" | "offset minute" => {
                    "a date-time needs `Z` or an offset `+hh:mm` or `-hh:mm` such as `+02:00`"
                }
                _ => EXPECTED,
            }
        }
        _ => EXPECTED,
    }
}

/// The IMF-fixdate of RFC 9110 (the HTTP-date that senders must use) for
/// `seconds` since the Unix epoch, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
/// Seconds outside what [`parse`] accepts (1970 to 9999) are clamped to it.
pub(crate) fn http_date(seconds: i64) -> String {
    let seconds = seconds.clamp(0, LAST).unsigned_abs();
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdates() {
        // The examples of RFC 9110 and RFC 8594.
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            parse("2018-11-11T23:59:59Z").map(http_date).as_deref(),
            Ok("Sun, 11 Nov 2018 23:59:59 GMT")
        );
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            parse("2024-02-29").map(http_date).as_deref(),
            Ok("Thu, 29 Feb 2024 00:00:00 GMT")
        );
        assert_eq!(
            parse("9999-12-31T23:59:59Z").map(http_date).as_deref(),
            Ok("Fri, 31 Dec 9999 23:59:59 GMT")
        );
        // Out of range: clamped, not a panic in `httpdate`.
        assert_eq!(http_date(-1), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn dates_and_date_times_parse() {
        assert_eq!(parse("1970-01-01"), Ok(0));
        // The example of RFC 9745: @1688169599 is 2023-06-30T23:59:59Z.
        assert_eq!(parse("2023-06-30T23:59:59Z"), Ok(1_688_169_599));
        assert_eq!(parse("2023-06-30t23:59:59z"), Ok(1_688_169_599));
        assert_eq!(parse("2023-07-01T01:59:59+02:00"), Ok(1_688_169_599));
        assert_eq!(parse("2023-06-30T20:29:59-03:30"), Ok(1_688_169_599));
        assert_eq!(parse("2023-06-30T23:59:59.999Z"), Ok(1_688_169_599));
        // RFC 3339 (5.6, note) allows a space between date and time, and a
        // leap second at the end of a month, counted as its last second.
        assert_eq!(parse("2023-06-30 23:59:59Z"), Ok(1_688_169_599));
        assert_eq!(parse("2023-06-30T23:59:60Z"), Ok(1_688_169_599));
        assert_eq!(parse("2023-07-01"), Ok(1_688_169_600));
        assert_eq!(parse("2000-02-29"), Ok(951_782_400));
        assert_eq!(parse("9999-12-31T23:59:59Z"), Ok(LAST));
    }

    #[test]
    fn bad_dates_say_why() {
        let cases = [
            ("", "expected `YYYY-MM-DD`"),
            ("2025-6-30", "month must be 01 to 12 (`YYYY-MM-DD`)"),
            ("2025-06-3", "expected `YYYY-MM-DD`"),
            ("2025/06/30", "expected `YYYY-MM-DD`"),
            ("30-06-2025", "expected `YYYY-MM-DD`"),
            ("+2025-06-30", "expected `YYYY-MM-DD`"),
            ("2025-06-30-01", "expected `YYYY-MM-DD`"),
            ("1969-12-31", "1970 or later"),
            ("0000-01-01", "1970 or later"),
            ("2025-13-01", "month must be 01 to 12"),
            ("2025-00-01", "month must be 01 to 12"),
            ("2025-02-29", "no such day"),
            ("1900-02-29", "no such day"),
            ("2100-02-29", "no such day"),
            ("2025-04-31", "no such day"),
            ("2025-06-30T12:00:00", "needs `Z` or an offset"),
            ("2025-06-30x12:00:00Z", "expected `YYYY-MM-DD`"),
            ("2025-06-30_12:00:00Z", "expected `YYYY-MM-DD`"),
            ("2025-06-30T24:00:00Z", "00:00:00 to 23:59:59"),
            ("2025-06-30T12:60:00Z", "00:00:00 to 23:59:59"),
            ("2025-06-29T23:59:60Z", "00:00:00 to 23:59:59"),
            ("2025-06-30T12:00Z", "expected `YYYY-MM-DD`"),
            ("2025-06-30T12:00:00.Z", "expected `YYYY-MM-DD`"),
            ("2025-06-30T", "expected `YYYY-MM-DD`"),
            (
                "2025-06-30T12:00:00+2:00",
                "needs `Z` or an offset `+hh:mm`",
            ),
            (
                "2025-06-30T12:00:00+24:00",
                "needs `Z` or an offset `+hh:mm`",
            ),
            ("2025-06-30T12:00:00+02:60", "offset must be"),
            ("2025-06-30T12:00:00+0200", "expected `YYYY-MM-DD`"),
            ("1970-01-01T00:00:00+01:00", "before 1970"),
            ("9999-12-31T23:59:59-01:00", "after 9999-12-31T23:59:59Z"),
            ("２０２５-06-30", "expected `YYYY-MM-DD`"),
        ];
        for (text, expected) in cases {
            let err = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.starts_with(&format!("`{text}`")), "{err}");
        }
    }
}
