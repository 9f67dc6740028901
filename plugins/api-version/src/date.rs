//! Dates: parsing the configuration's RFC 3339 dates and writing the
//! HTTP-dates of the `Sunset` header, with the proleptic Gregorian calendar
//! (no dependency, no time zone database: every time here is UTC).

/// Seconds in a day.
const DAY: i64 = 86_400;

/// The days from 1970-01-01 to the date `year-month-day` (negative before).
/// `month` is 1 to 12 and `day` 1 to 31. Howard Hinnant's
/// `days_from_civil`.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `(year, month, day)` that is `days` after 1970-01-01. Howard
/// Hinnant's `civil_from_days`, the inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // `day` is 1..=31 and `month` 1..=12 by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Whether `year` is a leap year.
fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The number of days in `month` of `year`.
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a date of the configuration into seconds since the Unix epoch:
/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time with `Z` or an
/// offset, e.g. `2025-06-30T12:00:00Z` or `2025-06-30T14:00:00+02:00`
/// (fractions of a second are dropped). Years 1970 to 9999.
pub(crate) fn parse(text: &str) -> Result<i64, String> {
    const EXPECTED: &str =
        "expected `YYYY-MM-DD` or an RFC 3339 date-time such as `2025-06-30T12:00:00Z`";
    let bad = |what: &str| format!("`{text}`: {what}");
    let (date, time) = match text.split_once(['T', 't']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let (Some(year), Some(month), Some(day), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(EXPECTED));
    };
    let (Some(year), Some(month), Some(day)) = (digits(year, 4), digits(month, 2), digits(day, 2))
    else {
        return Err(bad(EXPECTED));
    };
    let year = i64::from(year);
    if year < 1970 {
        return Err(bad("the year must be 1970 or later"));
    }
    if !(1..=12).contains(&month) {
        return Err(bad("the month must be 01 to 12"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such day in that month"));
    }
    let midnight = days_from_civil(year, month, day) * DAY;
    let Some(time) = time else {
        return Ok(midnight);
    };

    // hh:mm:ss[.fraction](Z|+hh:mm|-hh:mm)
    let (clock, offset) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let Some(sign_at) = time.rfind(['+', '-']) else {
            return Err(bad("a date-time needs `Z` or an offset such as `+02:00`"));
        };
        let (clock, offset) = time.split_at(sign_at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let Some((hours, minutes)) = offset.get(1..).and_then(|o| o.split_once(':')) else {
            return Err(bad(EXPECTED));
        };
        match (digits(hours, 2), digits(minutes, 2)) {
            (Some(h), Some(m)) if h < 24 && m < 60 => (clock, sign * i64::from(h * 3600 + m * 60)),
            _ => return Err(bad("the offset must be `+hh:mm` or `-hh:mm`")),
        }
    };
    let clock = match clock.split_once('.') {
        Some((clock, fraction))
            if !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit()) =>
        {
            clock
        }
        Some(_) => return Err(bad(EXPECTED)),
        None => clock,
    };
    let mut fields = clock.split(':');
    let (Some(h), Some(m), Some(s), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad(EXPECTED));
    };
    match (digits(h, 2), digits(m, 2), digits(s, 2)) {
        (Some(h), Some(m), Some(s)) if h < 24 && m < 60 && s < 60 => {
            let seconds = midnight + i64::from(h * 3600 + m * 60 + s) - offset;
            if seconds < 0 {
                return Err(bad("the time must not be before 1970-01-01T00:00:00Z"));
            }
            Ok(seconds)
        }
        (Some(_), Some(_), Some(_)) => Err(bad("the time must be 00:00:00 to 23:59:59")),
        _ => Err(bad(EXPECTED)),
    }
}

/// `text` as a number if it is exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<u32> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// The IMF-fixdate of RFC 9110 (the HTTP-date that senders must use) for
/// `seconds` since the Unix epoch, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn http_date(seconds: i64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = seconds.div_euclid(DAY);
    let in_day = seconds.rem_euclid(DAY);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = usize::try_from(days.rem_euclid(7)).map_or("Thu", |i| WEEKDAYS[i]);
    let month = usize::try_from(month)
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .map_or("Jan", |m| *m);
    format!(
        "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} GMT",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in (-1_000..=2_932_896).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            assert!(d >= 1 && d <= days_in_month(y, m), "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(19_358), (2023, 1, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }

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
        assert_eq!(parse("2023-07-01"), Ok(1_688_169_600));
        assert_eq!(parse("2000-02-29"), Ok(951_782_400));
    }

    #[test]
    fn bad_dates_say_why() {
        let cases = [
            ("", "expected `YYYY-MM-DD`"),
            ("2025-6-30", "expected `YYYY-MM-DD`"),
            ("2025/06/30", "expected `YYYY-MM-DD`"),
            ("30-06-2025", "expected `YYYY-MM-DD`"),
            ("2025-06-30-01", "expected `YYYY-MM-DD`"),
            ("1969-12-31", "1970 or later"),
            ("2025-13-01", "month must be 01 to 12"),
            ("2025-00-01", "month must be 01 to 12"),
            ("2025-02-29", "no such day"),
            ("1900-02-29", "1970 or later"),
            ("2100-02-29", "no such day"),
            ("2025-04-31", "no such day"),
            ("2025-06-30T12:00:00", "needs `Z` or an offset"),
            ("2025-06-30T24:00:00Z", "00:00:00 to 23:59:59"),
            ("2025-06-30T23:59:60Z", "00:00:00 to 23:59:59"),
            ("2025-06-30T12:00Z", "expected `YYYY-MM-DD`"),
            ("2025-06-30T12:00:00.Z", "expected `YYYY-MM-DD`"),
            ("2025-06-30T12:00:00+2:00", "offset must be"),
            ("2025-06-30T12:00:00+02:60", "offset must be"),
            ("2025-06-30T12:00:00+0200", "expected `YYYY-MM-DD`"),
            ("1970-01-01T00:00:00+01:00", "before 1970"),
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
