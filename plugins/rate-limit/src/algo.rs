//! The two counting algorithms, as plain functions of the stored state and
//! the time: GCRA for rates and fixed or calendar windows for quotas.
//!
//! Nothing here touches the store or the clock, so every boundary is unit
//! tested on the host.

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// A rate enforced with the generic cell rate algorithm (GCRA): on average
/// one request per `interval_us`, and up to `burst` requests at once after a
/// quiet period. The only state is the theoretical arrival time (TAT) of the
/// next request, in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// The emission interval `T`: the period divided by the rate, rounded
    /// up so that the rate is never exceeded.
    interval_us: u64,
    /// How far the TAT may run ahead of now: `burst × T`.
    tolerance_us: u64,
}

/// What [`Gcra::check`] decides for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GcraDecision {
    /// The request conforms; store `new_tat_us` (with the TTL `ttl_ms`, after
    /// which the bucket is full again and the entry is not needed).
    Allow {
        /// The TAT to store.
        new_tat_us: u64,
        /// Requests that could still be made right now.
        remaining: u64,
        /// When one more request becomes available, in ms (rounded up).
        next_at_ms: u64,
        /// Time to live of the stored TAT, in ms.
        ttl_ms: u64,
    },
    /// The request does not conform; the first one that would is at
    /// `retry_at_ms` (rounded up). The stored TAT is left alone.
    Deny {
        /// When a request would conform again, in ms.
        retry_at_ms: u64,
    },
}

impl Gcra {
    /// `rate` requests per `period_ms`, up to `burst` at once. Both are at
    /// least 1 (the configuration checks this).
    pub(crate) fn new(rate: u64, period_ms: u64, burst: u64) -> Self {
        let period_us = period_ms.saturating_mul(1000);
        let interval_us = period_us.div_ceil(rate.max(1)).max(1);
        Gcra {
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst.max(1)),
        }
    }

    /// The emission interval, in microseconds.
    pub(crate) fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// Decides one request at `now_ms` given the stored TAT (`None` when
    /// there is none: the bucket is full).
    pub(crate) fn check(&self, tat_us: Option<u64>, now_ms: u64) -> GcraDecision {
        let now_us = now_ms.saturating_mul(1000);
        let tat_us = tat_us.unwrap_or(now_us).max(now_us);
        let new_tat_us = tat_us.saturating_add(self.interval_us);
        let allow_at_us = new_tat_us.saturating_sub(self.tolerance_us);
        if allow_at_us > now_us {
            return GcraDecision::Deny {
                retry_at_ms: allow_at_us.div_ceil(1000),
            };
        }
        // Room left under the tolerance, in whole intervals.
        let slack_us = now_us + self.tolerance_us - new_tat_us;
        let remaining = slack_us / self.interval_us;
        let next_at_us = now_us + (remaining + 1) * self.interval_us - slack_us;
        GcraDecision::Allow {
            new_tat_us,
            remaining,
            next_at_ms: next_at_us.div_ceil(1000),
            ttl_ms: (new_tat_us - now_us).div_ceil(1000),
        }
    }

    /// The state at `now_ms` without counting a request: `Ok((remaining,
    /// next_at_ms))`, the requests that could be made now and when one more
    /// becomes available, or `Err(retry_at_ms)` when none can. What
    /// [`check`](Self::check) reports, plus the one request it would have
    /// counted: after an admission `remaining` is exactly one less and
    /// `next_at_ms` the same.
    pub(crate) fn peek(&self, tat_us: Option<u64>, now_ms: u64) -> Result<(u64, u64), u64> {
        match self.check(tat_us, now_ms) {
            GcraDecision::Allow {
                remaining,
                next_at_ms,
                ..
            } => Ok((remaining + 1, next_at_ms)),
            GcraDecision::Deny { retry_at_ms } => Err(retry_at_ms),
        }
    }

    /// The TAT after giving back one request that was admitted but then
    /// refused by another limit, or `None` when there is nothing to give
    /// back (the TAT has already fallen behind now).
    pub(crate) fn refund(&self, tat_us: u64, now_ms: u64) -> Option<u64> {
        let now_us = now_ms.saturating_mul(1000);
        (tat_us > now_us).then(|| tat_us.saturating_sub(self.interval_us).max(now_us))
    }
}

/// A quota's window: a fixed length aligned to the Unix epoch (so minutes,
/// hours and days start at :00, on the hour and at midnight UTC), or a
/// calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// Windows of this many seconds (at least 1), the first starting at
    /// the epoch.
    Fixed(u64),
    /// From the first of the month, midnight UTC, to the first of the next.
    Month,
}

impl Window {
    /// The window holding `now_ms`: `(start_ms, end_ms)`, end exclusive.
    pub(crate) fn window(self, now_ms: u64) -> (u64, u64) {
        let fixed = |len_ms: u64| {
            let start = now_ms - now_ms % len_ms;
            (start, start.saturating_add(len_ms))
        };
        match self {
            Window::Fixed(seconds) => fixed(seconds.saturating_mul(1000).max(1)),
            Window::Month => month(now_ms).unwrap_or_else(|| fixed(31 * DAY_MS)),
        }
    }
}

/// The calendar month (UTC) holding `now_ms`, or `None` past the years the
/// `time` crate represents (9999), where [`Window::window`] falls back to
/// fixed 31-day windows.
fn month(now_ms: u64) -> Option<(u64, u64)> {
    let seconds = i64::try_from(now_ms / 1000).ok()?;
    let date = time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .date();
    let first = |year, month| {
        let date = time::Date::from_calendar_date(year, month, 1).ok()?;
        let seconds = date.midnight().assume_utc().unix_timestamp();
        u64::try_from(seconds).ok()?.checked_mul(1000)
    };
    let (year, month) = (date.year(), date.month());
    let next_year = if month == time::Month::December {
        year + 1
    } else {
        year
    };
    Some((first(year, month)?, first(next_year, month.next())?))
}

/// Whole seconds from `now_ms` until `at_ms`, rounded up (0 if past).
pub(crate) fn seconds_until(at_ms: u64, now_ms: u64) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-03-14 15:09:26.535 UTC.
    const PI_DAY: u64 = 1_741_964_966_535;

    fn allow(decision: GcraDecision) -> (u64, u64, u64, u64) {
        match decision {
            GcraDecision::Allow {
                new_tat_us,
                remaining,
                next_at_ms,
                ttl_ms,
            } => (new_tat_us, remaining, next_at_ms, ttl_ms),
            GcraDecision::Deny { retry_at_ms } => panic!("denied until {retry_at_ms}"),
        }
    }

    fn deny(decision: GcraDecision) -> u64 {
        match decision {
            GcraDecision::Deny { retry_at_ms } => retry_at_ms,
            GcraDecision::Allow { .. } => panic!("expected a denial"),
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let now = 1_000_000;
        let gcra = Gcra::new(5, 1000, 5);
        assert_eq!(gcra.interval_us(), 200_000);
        let mut tat = None;
        for expected_remaining in (0..5).rev() {
            let (new_tat, remaining, _, ttl) = allow(gcra.check(tat, now));
            assert_eq!(remaining, expected_remaining);
            assert_eq!(ttl, (new_tat - now * 1000) / 1000);
            tat = Some(new_tat);
        }
        assert_eq!(tat, Some(now * 1000 + 1_000_000), "five intervals ahead");
        // The sixth must wait one interval.
        assert_eq!(deny(gcra.check(tat, now)), now + 200);
        assert_eq!(deny(gcra.check(tat, now + 199)), now + 200);
        let (_, remaining, next_at, _) = allow(gcra.check(tat, now + 200));
        assert_eq!(remaining, 0);
        assert_eq!(next_at, now + 400);
        // A full period later the whole burst is back.
        let (_, remaining, _, _) = allow(gcra.check(tat, now + 1000));
        assert_eq!(remaining, 4);
    }

    #[test]
    fn gcra_burst_may_differ_from_the_rate() {
        let now = 50_000;
        // 60 per minute (one a second) with bursts of 3.
        let gcra = Gcra::new(60, 60_000, 3);
        let mut tat = None;
        for _ in 0..3 {
            let (new_tat, ..) = allow(gcra.check(tat, now));
            tat = Some(new_tat);
        }
        assert_eq!(deny(gcra.check(tat, now)), now + 1000);
        // A burst of 1 is a strict spacing.
        let strict = Gcra::new(2, 1000, 1);
        let (first, remaining, next_at, _) = allow(strict.check(None, now));
        assert_eq!((remaining, next_at), (0, now + 500));
        assert_eq!(deny(strict.check(Some(first), now + 1)), now + 500);
    }

    #[test]
    fn gcra_intervals_round_up_so_the_rate_is_never_exceeded() {
        let gcra = Gcra::new(3, 1000, 3);
        assert_eq!(gcra.interval_us(), 333_334);
        let mut tat = None;
        let mut admitted = 0;
        // Requests every millisecond for one second, starting full.
        for ms in 0..1000 {
            if let GcraDecision::Allow { new_tat_us, .. } = gcra.check(tat, 10_000 + ms) {
                tat = Some(new_tat_us);
                admitted += 1;
            }
        }
        assert_eq!(
            admitted, 5,
            "the burst of 3, then one at 333.3 ms and 666.7 ms"
        );
    }

    #[test]
    fn gcra_past_tat_counts_as_a_full_bucket() {
        let gcra = Gcra::new(10, 1000, 10);
        let (_, remaining, _, _) = allow(gcra.check(Some(1), 5_000));
        assert_eq!(remaining, 9);
    }

    #[test]
    fn gcra_peek_reports_without_counting() {
        let gcra = Gcra::new(5, 1000, 5);
        let now = 1_000_000;
        assert_eq!(gcra.peek(None, now), Ok((5, now + 200)));
        let mut tat = None;
        for _ in 0..3 {
            let (new_tat, remaining, next_at, _) = allow(gcra.check(tat, now));
            let peeked = gcra.peek(Some(new_tat), now);
            assert_eq!(peeked, Ok((remaining, next_at)), "the state it left");
            assert_eq!(
                gcra.peek(tat, now),
                Ok((remaining + 1, next_at)),
                "before it counted"
            );
            tat = Some(new_tat);
        }
        let full = Some(now * 1000 + 1_000_000);
        assert_eq!(gcra.peek(full, now), Err(now + 200));
        assert_eq!(gcra.peek(full, now), Err(deny(gcra.check(full, now))));
    }

    #[test]
    fn gcra_refund_gives_back_one_interval_but_not_the_past() {
        let gcra = Gcra::new(5, 1000, 5);
        let now = 2_000;
        assert_eq!(gcra.refund(2_600_000, now), Some(2_400_000));
        assert_eq!(gcra.refund(2_100_000, now), Some(2_000_000));
        assert_eq!(gcra.refund(2_000_000, now), None);
        assert_eq!(gcra.refund(1_000, now), None);
    }

    #[test]
    fn fixed_windows_align_to_utc() {
        assert_eq!(
            Window::Fixed(60).window(PI_DAY),
            (1_741_964_940_000, 1_741_965_000_000)
        );
        assert_eq!(
            Window::Fixed(3600).window(PI_DAY),
            (1_741_964_400_000, 1_741_968_000_000)
        );
        // 2025-03-14T00:00:00Z .. 2025-03-15T00:00:00Z
        assert_eq!(
            Window::Fixed(86_400).window(PI_DAY),
            (1_741_910_400_000, 1_741_996_800_000)
        );
        // 15:09:20 .. 15:09:30
        assert_eq!(
            Window::Fixed(10).window(PI_DAY),
            (1_741_964_960_000, 1_741_964_970_000)
        );
        // 2025-03-01T00:00:00Z .. 2025-04-01T00:00:00Z
        assert_eq!(
            Window::Month.window(PI_DAY),
            (1_740_787_200_000, 1_743_465_600_000)
        );
    }

    #[test]
    fn window_boundaries_are_start_inclusive_end_exclusive() {
        for window in [Window::Fixed(7), Window::Fixed(86_400), Window::Month] {
            let (start, end) = window.window(PI_DAY);
            assert_eq!(window.window(start), (start, end), "{window:?}");
            assert_eq!(window.window(end - 1), (start, end), "{window:?}");
            assert_eq!(window.window(end).0, end, "{window:?}");
        }
    }

    /// Midnight UTC of a date, in ms.
    fn day(year: i32, month: u8, day: u8) -> u64 {
        let month = time::Month::try_from(month).expect("month");
        let date = time::Date::from_calendar_date(year, month, day).expect("date");
        let seconds = date.midnight().assume_utc().unix_timestamp();
        u64::try_from(seconds).expect("after 1970") * 1000
    }

    #[test]
    fn months_have_their_own_lengths() {
        let len = |at: u64| {
            let (start, end) = Window::Month.window(at);
            (end - start) / DAY_MS
        };
        assert_eq!(len(day(2024, 2, 10)), 29, "leap February");
        assert_eq!(len(day(2025, 2, 10)), 28);
        assert_eq!(len(day(2100, 2, 10)), 28, "not a leap year");
        assert_eq!(len(day(2000, 2, 10)), 29, "leap century");
        assert_eq!(len(day(2025, 4, 30)), 30);
        // December rolls over into January of the next year.
        assert_eq!(
            Window::Month.window(day(2025, 12, 31) + 5),
            (day(2025, 12, 1), day(2026, 1, 1))
        );
        assert_eq!(Window::Month.window(0), (0, day(1970, 2, 1)));
        // Past the year 9999: fixed 31-day windows rather than a panic.
        let far = day(9999, 12, 31) + 2 * DAY_MS;
        let (start, end) = Window::Month.window(far);
        assert_eq!(end - start, 31 * DAY_MS);
        assert!(start <= far && far < end);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds_until(10_000, 10_000), 0);
        assert_eq!(seconds_until(10_001, 10_000), 1);
        assert_eq!(seconds_until(11_000, 10_000), 1);
        assert_eq!(seconds_until(11_001, 10_000), 2);
        assert_eq!(seconds_until(5, 10_000), 0);
    }
}
