//! Sliding-window counters in the shared store.
//!
//! A window of `W` ms is split into `N` slots of `S = ceil(W / N)` ms; slot
//! `i` covers `[i*S, (i+1)*S)` of the gateway clock. An event increments the
//! counter of its slot (`<prefix>:<i>`, expiring `(N + 1) * S` ms after its
//! first event, so a slot lives as long as it can be read). The window's
//! count is the sum of the current slot and the `N - 1` before it.
//!
//! The approximation: the sum covers the whole oldest slot and the current
//! slot up to now, i.e. the last `(N - 1) * S` to `N * S` ms. It never counts
//! an event older than `N * S` (that is `W`, or up to `N - 1` ms more when
//! `W` is not a multiple of `N`), and it may have dropped events between
//! `W - S` and `W` ms old. With the default 10 slots the window is exact to
//! a tenth of its length. One slot (`slots = 1`) is a fixed window.

use crate::store::{Counts as _, Store, StoreError, ttl};

/// A sliding window of `window_ms` split into `slots` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// The window's length in milliseconds.
    pub(crate) window_ms: u64,
    /// How many slots it is split into (at least 1).
    pub(crate) slots: u32,
}

impl Window {
    /// A window of `window_ms` (at least 1) in `slots` slots (at least 1).
    pub(crate) fn new(window_ms: u64, slots: u32) -> Self {
        Window {
            window_ms: window_ms.max(1),
            slots: slots.max(1),
        }
    }

    /// The length of one slot in milliseconds.
    pub(crate) fn slot_ms(&self) -> u64 {
        self.window_ms.div_ceil(u64::from(self.slots)).max(1)
    }

    /// The window's length in whole seconds, for labels.
    pub(crate) fn seconds(&self) -> u64 {
        self.window_ms / 1000
    }

    /// How long a slot counter lives after its first event.
    fn ttl_ms(&self) -> u64 {
        self.slot_ms().saturating_mul(u64::from(self.slots) + 1)
    }

    /// The key of the slot that holds `now`.
    fn key(&self, prefix: &str, slot: u64) -> String {
        format!("{prefix}:{slot}")
    }

    /// Counts one event at `now` and returns the window's count, this event
    /// included.
    pub(crate) fn add(
        &self,
        store: &impl Store,
        prefix: &str,
        now: u64,
    ) -> Result<u64, StoreError> {
        let current = self.record(store, prefix, now)?;
        Ok(current + self.older(store, prefix, now))
    }

    /// Counts one event at `now` without reading the window back (one store
    /// call). Returns the count of the current slot.
    pub(crate) fn record(
        &self,
        store: &impl Store,
        prefix: &str,
        now: u64,
    ) -> Result<u64, StoreError> {
        let slot = now / self.slot_ms();
        let value = store.increment(&self.key(prefix, slot), 1, ttl(self.ttl_ms()))?;
        Ok(u64::try_from(value).unwrap_or(0))
    }

    /// The window's count at `now`.
    pub(crate) fn sum(&self, store: &impl Store, prefix: &str, now: u64) -> u64 {
        let slot = now / self.slot_ms();
        store.count(&self.key(prefix, slot)) + self.older(store, prefix, now)
    }

    /// The sum of the `slots - 1` slots before the current one.
    fn older(&self, store: &impl Store, prefix: &str, now: u64) -> u64 {
        let slot = now / self.slot_ms();
        (1..u64::from(self.slots))
            .filter_map(|back| slot.checked_sub(back))
            .map(|old| store.count(&self.key(prefix, old)))
            .fold(0, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_sdk::store::MemoryStore;

    #[test]
    fn slots_round_up() {
        assert_eq!(Window::new(10_000, 10).slot_ms(), 1000);
        assert_eq!(Window::new(10_000, 3).slot_ms(), 3334);
        assert_eq!(Window::new(5, 10).slot_ms(), 1);
        assert_eq!(Window::new(0, 0), Window::new(1, 1));
        assert_eq!(Window::new(10_500, 1).seconds(), 10);
    }

    #[test]
    fn events_leave_the_window_slot_by_slot() {
        let window = Window::new(10_000, 10);
        let store = MemoryStore::at(100_000);
        // One event at the start of each of 5 seconds: t = 100.0 .. 104.0 s.
        for i in 0..5 {
            let now = 100_000 + i * 1000;
            store.set_now(now);
            assert_eq!(window.add(&store, "w", now), Ok(i + 1));
        }
        // Nine seconds after the first event it is still counted.
        store.set_now(109_999);
        assert_eq!(window.sum(&store, "w", 109_999), 5);
        // Its slot leaves the window once the tenth slot after it starts.
        store.set_now(110_000);
        assert_eq!(window.sum(&store, "w", 110_000), 4);
        store.set_now(114_000);
        assert_eq!(window.sum(&store, "w", 114_000), 0);
        // The last counter, made at 104 s, lives one window and one slot.
        let live =
            |store: &MemoryStore| store.keys().iter().filter(|k| k.starts_with("w:")).count();
        assert_eq!(live(&store), 1);
        store.set_now(115_000);
        assert_eq!(live(&store), 0, "slot counters expire");
    }

    #[test]
    fn the_window_drops_at_most_one_slot_early() {
        let window = Window::new(10_000, 10);
        let store = MemoryStore::at(100_900);
        window.add(&store, "w", 100_900).expect("add");
        // 9.1 s later the event, though younger than 10 s, has left: the
        // approximation drops events between W - S and W old.
        assert_eq!(window.sum(&store, "w", 110_000), 0);
        assert_eq!(window.sum(&store, "w", 109_999), 1);
    }

    #[test]
    fn one_slot_is_a_fixed_window() {
        let window = Window::new(1000, 1);
        let store = MemoryStore::at(5000);
        assert_eq!(window.add(&store, "f", 5000), Ok(1));
        assert_eq!(window.add(&store, "f", 5999), Ok(2));
        store.set_now(6000);
        assert_eq!(window.add(&store, "f", 6000), Ok(1));
    }

    #[test]
    fn record_counts_without_reading_back() {
        let window = Window::new(10_000, 10);
        let store = MemoryStore::at(0);
        assert_eq!(window.record(&store, "r", 0), Ok(1));
        assert_eq!(window.record(&store, "r", 1500), Ok(1));
        assert_eq!(window.sum(&store, "r", 1500), 2);
        store.fail_writes(Some(StoreError::Full));
        assert_eq!(window.record(&store, "r", 1600), Err(StoreError::Full));
    }

    #[test]
    fn prefixes_are_separate() {
        let window = Window::new(10_000, 10);
        let store = MemoryStore::at(0);
        window.add(&store, "a", 0).expect("add");
        window.add(&store, "b", 0).expect("add");
        assert_eq!(window.add(&store, "a", 10), Ok(2));
        assert_eq!(window.sum(&store, "b", 10), 1);
    }
}
