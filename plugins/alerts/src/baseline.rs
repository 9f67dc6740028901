//! The traffic-spike detector's state: fixed windows of requests per route,
//! and a baseline, the exponentially weighted moving average (EWMA) of the
//! counts of the complete windows before the current one.
//!
//! Window `k` covers `[k*W, (k+1)*W)`; its count is the counter
//! `spike:<scope>:<k>`. The baseline `baseline:<scope>` is
//! `<last>;<ewma>;<windows>`: the last window folded in, the average, and
//! how many windows it has seen. The first request of window `k` folds the
//! windows `last+1 ..= k-1` in (compare-and-swap, so once across
//! instances): only `last+1` can have had requests (a request in any later
//! one would have folded `last+1` already), the others count 0. The window
//! during which the route first sees traffic is partial and never folded.

use crate::config::SpikeRule;
use crate::store::{Counts as _, Store, StoreError, ttl};

/// Windows folded at most one by one; a longer idle gap just decays.
const MAX_ZERO_WINDOWS: u64 = 10_000;

/// The moving average of past windows' counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Baseline {
    /// The last window folded in.
    pub(crate) last: u64,
    /// The average count per window.
    pub(crate) ewma: f64,
    /// How many windows have been folded in.
    pub(crate) windows: u64,
}

impl Baseline {
    /// A baseline that starts after window `current` (which is partial).
    pub(crate) fn start(current: u64) -> Self {
        Baseline {
            last: current,
            ewma: 0.0,
            windows: 0,
        }
    }

    fn encode(self) -> String {
        format!("{};{};{}", self.last, self.ewma, self.windows)
    }

    fn decode(text: &str) -> Option<Baseline> {
        let mut parts = text.split(';');
        let baseline = Baseline {
            last: parts.next()?.parse().ok()?,
            ewma: parts.next()?.parse().ok().filter(|e: &f64| e.is_finite())?,
            windows: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(baseline)
    }

    /// The baseline once every window before `current` is folded in, the
    /// first of them (`last + 1`) having counted `first_count` and the
    /// others nothing. `alpha` weighs the newest window.
    pub(crate) fn fold(self, current: u64, first_count: u64, alpha: f64) -> Baseline {
        if current <= self.last.saturating_add(1) {
            return self;
        }
        let folded = current - 1 - self.last;
        let first = first_count as f64;
        let mut ewma = if self.windows == 0 {
            first
        } else {
            alpha * first + (1.0 - alpha) * self.ewma
        };
        let zeros = (folded - 1).min(MAX_ZERO_WINDOWS);
        ewma *= (1.0 - alpha).powi(i32::try_from(zeros).unwrap_or(i32::MAX));
        Baseline {
            last: current - 1,
            ewma,
            windows: self.windows.saturating_add(folded),
        }
    }

    /// The smallest count of the current window that is a spike.
    pub(crate) fn threshold(&self, rule: &SpikeRule) -> u64 {
        // floor(factor * ewma) + 1 is the smallest whole count above it.
        let above = (rule.factor * self.ewma).floor();
        let above = if above >= u64::MAX as f64 {
            u64::MAX
        } else {
            above as u64
        };
        above.saturating_add(1).max(rule.min_requests)
    }

    /// Whether `count` requests in the current window are a spike.
    pub(crate) fn is_spike(&self, rule: &SpikeRule, count: u64) -> bool {
        self.windows >= rule.warmup_windows && count >= self.threshold(rule)
    }
}

/// The state of the route's current window: its count so far (this request
/// included) and the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SpikeState {
    /// Requests in the current window.
    pub(crate) count: u64,
    /// The average of the windows before.
    pub(crate) baseline: Baseline,
}

/// Counts a request at `now` on the route whose scope is `scope`, folding
/// finished windows into the baseline.
pub(crate) fn record(
    store: &impl Store,
    rule: &SpikeRule,
    scope: &str,
    now: u64,
) -> Result<SpikeState, StoreError> {
    count(store, rule, scope, now, 1)
}

/// The state at `now` without counting a request (for a tick): finished
/// windows are still folded, so a route gone quiet decays its baseline.
pub(crate) fn peek(
    store: &impl Store,
    rule: &SpikeRule,
    scope: &str,
    now: u64,
) -> Result<SpikeState, StoreError> {
    count(store, rule, scope, now, 0)
}

fn count(
    store: &impl Store,
    rule: &SpikeRule,
    scope: &str,
    now: u64,
    requests: i64,
) -> Result<SpikeState, StoreError> {
    let window = rule.window_ms.max(1);
    let current = now / window;
    let count_key = |k: u64| format!("spike:{scope}:{k}");
    // A window's count is read when the next request after it arrives;
    // after 4 windows an unread count no longer matters much to the EWMA.
    let count = store.increment(&count_key(current), requests, ttl(window.saturating_mul(4)))?;
    let count = u64::try_from(count).unwrap_or(0);

    let key = format!("baseline:{scope}");
    let keep = ttl(window.saturating_mul(64));
    let raw = store.get(&key);
    let baseline = match raw.as_deref().and_then(Baseline::decode) {
        Some(baseline) if current > baseline.last.saturating_add(1) => {
            let first = store.count(&count_key(baseline.last + 1));
            let folded = baseline.fold(current, first, rule.alpha);
            if store.compare_and_swap(&key, raw.as_deref(), &folded.encode(), keep)? {
                folded
            } else {
                store
                    .get(&key)
                    .as_deref()
                    .and_then(Baseline::decode)
                    .unwrap_or(folded)
            }
        }
        Some(baseline) => baseline,
        None => {
            let fresh = Baseline::start(current);
            store.compare_and_swap(&key, raw.as_deref(), &fresh.encode(), keep)?;
            fresh
        }
    };
    Ok(SpikeState { count, baseline })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Level, Timing};
    use portcullis_sdk::store::MemoryStore;

    fn rule() -> SpikeRule {
        SpikeRule {
            window_ms: 10_000,
            factor: 3.0,
            min_requests: 20,
            alpha: 0.5,
            warmup_windows: 2,
            timing: Timing {
                quiet_ms: 10_000,
                cooldown_ms: 60_000,
                level: Level::Warning,
            },
        }
    }

    #[test]
    fn folding_averages_windows_and_decays_over_idle_ones() {
        let start = Baseline::start(10);
        assert_eq!(start.fold(11, 99, 0.5), start, "window 10 is still open");
        let one = start.fold(12, 8, 0.5);
        assert_eq!(
            one,
            Baseline {
                last: 11,
                ewma: 8.0,
                windows: 1
            },
            "the first window sets the average"
        );
        let two = one.fold(13, 4, 0.5);
        assert_eq!(two.ewma, 6.0);
        assert_eq!(two.windows, 2);
        // Window 13 had 10 requests, 14 and 15 none.
        let idle = two.fold(16, 10, 0.5);
        assert_eq!(idle.last, 15);
        assert_eq!(idle.ewma, 8.0 * 0.25);
        assert_eq!(idle.windows, 5);
        let long_idle = idle.fold(u64::MAX, 0, 0.5);
        assert_eq!(long_idle.ewma, 0.0);
        assert_eq!(long_idle.last, u64::MAX - 1);
    }

    #[test]
    fn a_spike_needs_warmup_factor_and_minimum() {
        let rule = rule();
        let cold = Baseline {
            last: 0,
            ewma: 10.0,
            windows: 1,
        };
        assert!(!cold.is_spike(&rule, 1000), "not warmed up");
        let warm = Baseline { windows: 2, ..cold };
        assert_eq!(warm.threshold(&rule), 31);
        assert!(!warm.is_spike(&rule, 30), "exactly 3x is not above it");
        assert!(warm.is_spike(&rule, 31));
        let quiet = Baseline { ewma: 1.0, ..warm };
        assert_eq!(quiet.threshold(&rule), 20, "min_requests");
        assert!(!quiet.is_spike(&rule, 19));
        assert!(quiet.is_spike(&rule, 20));
        let huge = Baseline {
            ewma: 1e300,
            ..warm
        };
        assert_eq!(huge.threshold(&rule), u64::MAX);
    }

    #[test]
    fn baselines_round_trip_and_reject_garbage() {
        let baseline = Baseline {
            last: 7,
            ewma: 2.5,
            windows: 3,
        };
        assert_eq!(Baseline::decode(&baseline.encode()), Some(baseline));
        for bad in ["", "1;2", "1;x;3", "1;2;3;4", "1;NaN;2", "1;inf;2"] {
            assert_eq!(Baseline::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn recording_counts_the_window_and_folds_the_last_one() {
        let rule = rule();
        let store = MemoryStore::at(0);
        // Window 0 (partial, not folded): 3 requests.
        for i in 0..3 {
            let state = record(&store, &rule, "s", 1000 + i).expect("store works");
            assert_eq!(state.count, i + 1);
            assert_eq!(state.baseline, Baseline::start(0));
        }
        // Window 1: 6 requests; window 2 folds it.
        for i in 0..6 {
            store.set_now(10_000 + i);
            record(&store, &rule, "s", 10_000 + i).expect("store works");
        }
        store.set_now(20_000);
        let state = record(&store, &rule, "s", 20_000).expect("store works");
        assert_eq!(state.count, 1);
        assert_eq!(
            state.baseline,
            Baseline {
                last: 1,
                ewma: 6.0,
                windows: 1
            }
        );
        // Nothing in windows 3 and 4: both fold in as zeros at window 5
        // after window 2's single request.
        store.set_now(50_000);
        let state = record(&store, &rule, "s", 50_000).expect("store works");
        assert_eq!(state.baseline.last, 4);
        assert_eq!(state.baseline.windows, 4);
        assert_eq!(state.baseline.ewma, (0.5 * 1.0 + 0.5 * 6.0) * 0.25);
    }
}
