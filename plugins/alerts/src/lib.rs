//! `alerts`: a Portcullis policy plugin that watches a route's responses and
//! raises alerts on exceptional traffic:
//!
//! - `auth-failures`: repeated 401/403 responses per client IP or consumer;
//! - `rate-limited`: bursts of 429 responses per client IP, consumer or route;
//! - `error-rate`: a share of 5xx responses above a ratio on the route;
//! - `traffic-spike`: a request rate far above the route's recent baseline.
//!
//! It never changes a request or a response. It reads responses in
//! `on_response`, so it must come FIRST in the route's plugin list: the
//! response phase runs in reverse order, and only plugins before the one
//! that replies (key-auth's 401, rate-limit's 429) see its reply.
//!
//! Counts live in the gateway's shared store (sliding windows split in
//! slots, see the `window` module), so every instance on every route agrees, and each
//! incident sends one alert and one resolution (see the `incident` module). An
//! incident resolves at the first sweep after it has cleared: run by a
//! request on the route or by the gateway's tick (`on_tick`), at most every
//! `sweep_interval_s` (see the README).

use std::cell::Cell;

use portcullis_sdk::alert::{self, Alert};
use portcullis_sdk::{Policy, Request, Response, ResponseChanges, policy, time};

mod baseline;
mod config;
mod detect;
mod incident;
mod store;
mod window;

use config::{Config, Settings};
use detect::{Notice, Observation, Severity};
use store::HostStore;

/// Store failures are logged at most this often per instance.
const STORE_WARNING_INTERVAL_MS: u64 = 60_000;

/// One route's `alerts` plugin.
struct Alerts {
    /// The detectors that are on.
    settings: Settings,
    /// This instance sweeps the route's incidents no earlier than this (a
    /// hint that saves a store call; the store decides who sweeps).
    next_sweep: Cell<u64>,
    /// This instance logs a store failure no earlier than this.
    next_store_warning: Cell<u64>,
}

#[policy]
impl Policy for Alerts {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Alerts {
            settings: config.build()?,
            next_sweep: Cell::new(0),
            next_store_warning: Cell::new(0),
        })
    }

    fn on_response(&self, req: &Request, resp: &Response) -> ResponseChanges {
        let now = time::now_ms();
        let status = resp.status();
        let route = req.route();
        let client_ip = req.client_ip();
        // The identity is read only for responses a counting detector counts.
        let consumer = self
            .settings
            .count_rules()
            .any(|rule| rule.statuses.contains(&status))
            .then(|| req.identity())
            .flatten()
            .map(|identity| identity.consumer);
        let sweep = now >= self.next_sweep.get();
        if sweep {
            self.next_sweep
                .set(now.saturating_add(self.settings.sweep_interval_ms));
        }
        let observation = Observation {
            route: &route,
            status,
            client_ip: &client_ip,
            consumer: consumer.as_deref(),
            now,
        };
        let outcome = detect::observe(&self.settings, &HostStore, &observation, sweep);
        self.report(outcome, now);
        ResponseChanges::none()
    }

    fn on_tick(&self, route: &str) {
        let now = time::now_ms();
        if now < self.next_sweep.get() {
            return;
        }
        self.next_sweep
            .set(now.saturating_add(self.settings.sweep_interval_ms));
        let outcome = detect::tick(&self.settings, &HostStore, route, now);
        self.report(outcome, now);
    }
}

impl Alerts {
    /// Raises the outcome's alerts, and logs a store failure (at most once
    /// per [`STORE_WARNING_INTERVAL_MS`]).
    fn report(&self, outcome: detect::Outcome, now: u64) {
        for notice in outcome.notices {
            alert::raise(to_alert(notice));
        }
        if let Some(error) = outcome.error
            && now >= self.next_store_warning.get()
        {
            self.next_store_warning
                .set(now.saturating_add(STORE_WARNING_INTERVAL_MS));
            portcullis_sdk::warn!(
                "alerts: the shared store failed ({error}); some events were not counted"
            );
        }
    }
}

/// The SDK alert of a notice.
fn to_alert(notice: Notice) -> Alert {
    let alert = match notice.severity {
        Severity::Info => Alert::info(notice.kind, notice.message),
        Severity::Warning => Alert::warning(notice.kind, notice.message),
        Severity::Critical => Alert::critical(notice.kind, notice.message),
    };
    notice
        .labels
        .into_iter()
        .fold(alert, |alert, (name, value)| alert.label(name, value))
}
