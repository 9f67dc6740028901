//! Canary rollouts: a candidate (a new module, or a new config, for a
//! plugin on a route) takes a share of the route's requests, sticky by
//! client, consumer or a header, raised in steps. Each request's outcome is
//! counted for the arm that served it (stable or candidate): plugin
//! failures, refusals, and upstream 5xx after the plugin. The candidate is
//! promoted when it has stayed within the thresholds at every step for the
//! step's time and request count, and rolled back the moment it breaches
//! one. A rollback or a promotion is one atomic store: the next request
//! already takes the new way, and calls in flight finish where they began.
//!
//! How a rollout ended (promoted, rolled back, aborted) is kept in the
//! state directory (`rollouts.json`), keyed by route, plugin, candidate
//! module hash and config: a restart or a reload does not try a
//! rolled-back candidate again. Every step, promotion, rollback and
//! operator action is an audit record and an alert.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::alerts::{Alert, AlertSender};
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::config::{CanaryConfig, HashOn, Severity};
use crate::metrics::Decision;
use crate::plugin::view::RequestView;
use crate::plugin::{Hooks, PluginPool};

/// The candidate's whole share, in basis points.
const ALL: u32 = 10_000;
/// Events kept per rollout for the admin API.
const EVENTS_KEPT: usize = 50;

/// Which version served a request at a canary's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The live plugin as configured.
    Stable,
    /// The candidate.
    Candidate,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Taking its steps.
    Running,
    /// Held at its step by an operator (still rolled back on a breach).
    Paused,
    /// Serving every request.
    Promoted,
    /// Serving none: it breached a threshold.
    RolledBack,
    /// Serving none: an operator stopped it.
    Aborted,
}

impl Phase {
    fn ended(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Hold at the current step.
    Pause,
    /// Go on from a pause.
    Resume,
    /// Serve every request with the candidate now.
    Promote,
    /// Serve none with it, now.
    Abort,
}

impl Command {
    /// The command named `name` (`pause`, `resume`, `promote`, `abort`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            _ => return None,
        })
    }
}

/// One arm's counts at the current step.
#[derive(Debug, Default)]
struct ArmCounts {
    requests: AtomicU64,
    failures: AtomicU64,
    refusals: AtomicU64,
    responses: AtomicU64,
    errors_5xx: AtomicU64,
}

/// An arm's counts, read.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Requests it decided on.
    pub requests: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Requests it answered itself (a refusal).
    pub refusals: u64,
    /// Responses from the upstream after it.
    pub responses: u64,
    /// Of those, 5xx.
    pub errors_5xx: u64,
}

impl ArmCounts {
    fn read(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            responses: self.responses.load(Ordering::Relaxed),
            errors_5xx: self.errors_5xx.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.failures,
            &self.refusals,
            &self.responses,
            &self.errors_5xx,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// The stable version's ratios a candidate is held against.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Baseline {
    /// Its share of refusals.
    pub refusal_ratio: f64,
    /// Its share of upstream 5xx.
    pub error_5xx_ratio: f64,
}

/// What happened to a rollout, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When, RFC 3339.
    pub time: String,
    /// `started`, `step`, `promoted`, `rolled_back`, `paused`, `resumed`,
    /// `aborted`.
    pub event: &'static str,
    /// The candidate's share after it, in percent.
    pub percent: f64,
    /// Why.
    pub reason: String,
}

/// The state a rollout's judgement changes.
#[derive(Debug)]
struct State {
    phase: Phase,
    step: usize,
    step_started_ms: u64,
    baseline: Option<Baseline>,
    reason: Option<String>,
    events: Vec<Event>,
    /// When the rollout ended, for how long its last candidate calls took
    /// to finish.
    ended_at: Option<Instant>,
    drained_us: Option<u64>,
}

/// What identifies a rollout and where it reports.
#[derive(Debug, Clone)]
pub struct CanaryInfo {
    /// The route.
    pub route: Arc<str>,
    /// The live plugin.
    pub plugin: Arc<str>,
    /// The candidate's module.
    pub module: Arc<str>,
    /// Its SHA-256.
    pub sha256: String,
    /// The config keys it sets otherwise.
    pub config_keys: Vec<String>,
    /// The key its outcome is kept under: route, plugin, module hash and
    /// a hash of its config.
    pub key: String,
}

/// A candidate taking a share of a link's requests: its instances, and
/// the rollout, which a new build of the same candidate (its optimized
/// build, or a reload that does not change it) takes over.
pub struct Canary {
    pool: Arc<PluginPool>,
    core: Arc<CanaryCore>,
}

impl std::ops::Deref for Canary {
    type Target = CanaryCore;

    fn deref(&self) -> &CanaryCore {
        &self.core
    }
}

/// Where a rollout stands and what it has counted.
pub struct CanaryCore {
    settings: CanaryConfig,
    /// The candidate's share now, in basis points: what each request reads.
    share: AtomicU32,
    arms: [ArmCounts; 2],
    /// Candidate calls in flight (request to response).
    in_flight: AtomicU64,
    started: AtomicBool,
    /// Counts made since the last judgement (see [`Canary::judge`]).
    unjudged: AtomicBool,
    state: Mutex<State>,
    /// What it is.
    pub info: CanaryInfo,
    book: Arc<RolloutBook>,
    clock: Arc<dyn Clock>,
    seed: u64,
}

impl std::fmt::Debug for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canary")
            .field("pool", &self.pool)
            .field("core", &self.core)
            .finish()
    }
}

impl std::fmt::Debug for CanaryCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanaryCore")
            .field("info", &self.info)
            .field("share", &self.share)
            .finish_non_exhaustive()
    }
}

/// A request a canary's link routed, until its response: counts the
/// upstream's answer for its arm, and the candidate's calls in flight.
#[derive(Debug)]
pub struct Routed<'a> {
    canary: &'a CanaryCore,
    arm: Arm,
}

impl Routed<'_> {
    /// Counts the upstream's status for this request's arm.
    pub fn upstream_answered(&self, status: u16) {
        let arm = &self.canary.arms[self.arm as usize];
        arm.responses.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            arm.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        self.canary.judge();
    }

    /// Which version served it.
    pub fn arm(&self) -> Arm {
        self.arm
    }
}

impl Drop for Routed<'_> {
    fn drop(&mut self) {
        if self.arm == Arm::Candidate
            && self.canary.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && self.canary.share.load(Ordering::Acquire) == 0
        {
            self.canary.drained();
        }
    }
}

impl Canary {
    /// A rollout of `pool` (the candidate) by `settings`, starting where its
    /// kept outcome says (a rollout that ended stays ended).
    pub fn new(
        pool: Arc<PluginPool>,
        settings: CanaryConfig,
        info: CanaryInfo,
        book: Arc<RolloutBook>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let now = clock.now_ms();
        let kept = book.kept(&info.key);
        let (phase, share, reason) = match &kept {
            Some(k) if k.phase == Phase::Promoted => (Phase::Promoted, ALL, Some(k.reason.clone())),
            Some(k) => (k.phase, 0, Some(k.reason.clone())),
            None => (Phase::Running, settings.steps[0] * 100, None),
        };
        let seed = xxhash_rust::xxh3::xxh3_64(info.key.as_bytes());
        let core = Arc::new(CanaryCore {
            share: AtomicU32::new(share),
            arms: Default::default(),
            in_flight: AtomicU64::new(0),
            started: AtomicBool::new(kept.is_some()),
            unjudged: AtomicBool::new(false),
            state: Mutex::new(State {
                phase,
                step: 0,
                step_started_ms: now,
                baseline: None,
                reason,
                events: Vec::new(),
                ended_at: None,
                drained_us: None,
            }),
            settings,
            info,
            book,
            clock,
            seed,
        });
        Arc::new(Self { pool, core })
    }

    /// The rollout of `before` with the candidate's instances in `pool`
    /// (a new build of the same module and config).
    pub fn carry(pool: Arc<PluginPool>, before: &Canary) -> Arc<Self> {
        Arc::new(Self {
            pool,
            core: before.core.clone(),
        })
    }

    /// The candidate's instances.
    pub fn pool(&self) -> &Arc<PluginPool> {
        &self.pool
    }

    /// The candidate's hooks.
    pub fn hooks(&self) -> Hooks {
        self.pool.hooks()
    }
}

impl CanaryCore {
    /// The settings it runs by.
    pub fn settings(&self) -> &CanaryConfig {
        &self.settings
    }

    /// Which version serves `request`: the candidate for the share of
    /// sticky keys the current step gives it.
    pub fn route(&self, request: &RequestView) -> Routed<'_> {
        let share = self.share.load(Ordering::Acquire);
        let arm = if share == 0 {
            Arm::Stable
        } else if share >= ALL {
            Arm::Candidate
        } else {
            let bucket = self.bucket(request);
            if bucket < share {
                Arm::Candidate
            } else {
                Arm::Stable
            }
        };
        if arm == Arm::Candidate {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            if !self.started.swap(true, Ordering::Relaxed) {
                self.report(
                    "started",
                    "the first request reached the candidate".into(),
                    None,
                );
            }
        }
        Routed { canary: self, arm }
    }

    /// The request's sticky key's place among [`ALL`] buckets.
    fn bucket(&self, request: &RequestView) -> u32 {
        let ip;
        let key: &[u8] = match &self.settings.sticky {
            HashOn::Consumer => match &request.identity {
                Some(identity) => identity.consumer.as_bytes(),
                None => {
                    ip = request.client_ip.to_string();
                    ip.as_bytes()
                }
            },
            HashOn::Header(name) => match request.head.headers.get(name) {
                Some(value) => value.as_bytes(),
                None => {
                    ip = request.client_ip.to_string();
                    ip.as_bytes()
                }
            },
            HashOn::ClientIp => {
                ip = request.client_ip.to_string();
                ip.as_bytes()
            }
        };
        (xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed) % u64::from(ALL)) as u32
    }

    /// Counts what the version that served `routed` decided at this link.
    pub fn decided(&self, routed: &Routed<'_>, outcome: Decision) {
        let arm = &self.arms[routed.arm as usize];
        arm.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Decision::Continue => {}
            Decision::Respond(_) => {
                arm.refusals.fetch_add(1, Ordering::Relaxed);
            }
            Decision::Failed | Decision::FailedAllowed => {
                arm.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.judge();
    }

    /// Counts a failed `on-response` call of the candidate.
    pub fn response_failed(&self) {
        self.arms[Arm::Candidate as usize]
            .failures
            .fetch_add(1, Ordering::Relaxed);
        self.judge();
    }

    /// Rolls back on a breach, moves on when a step is done. Called after
    /// each count. A request never waits for another's judgement: it
    /// leaves a mark, and the request judging now judges again before it
    /// lets go, so that every count is judged.
    fn judge(&self) {
        self.unjudged.store(true, Ordering::Release);
        loop {
            let Ok(mut state) = self.state.try_lock() else {
                return;
            };
            if !self.unjudged.swap(false, Ordering::AcqRel) {
                return;
            }
            self.judge_now(&mut state);
            drop(state);
            if !self.unjudged.load(Ordering::Acquire) {
                return;
            }
        }
    }

    fn judge_now(&self, state: &mut State) {
        if !matches!(state.phase, Phase::Running | Phase::Paused) {
            return;
        }
        let candidate = self.arms[Arm::Candidate as usize].read();
        let stable = self.arms[Arm::Stable as usize].read();
        if let Some(breach) = self.breach(&candidate, &stable, state.baseline) {
            self.end(state, Phase::RolledBack, breach, None);
            return;
        }
        if state.phase == Phase::Paused {
            return;
        }
        let now = self.clock.now_ms();
        let s = &self.settings;
        if candidate.requests < s.min_requests
            || now.saturating_sub(state.step_started_ms) < s.step_ms
        {
            return;
        }
        // The step is done and held: its stable ratios are the baseline
        // from now on (when the stable version had enough requests).
        if stable.requests >= s.min_requests {
            state.baseline = Some(Baseline {
                refusal_ratio: ratio(stable.refusals, stable.requests),
                error_5xx_ratio: ratio(stable.errors_5xx, stable.responses),
            });
        }
        let passed = format!(
            "step {} ({}%) held for {} ms and {} candidate requests",
            state.step + 1,
            s.steps[state.step],
            now.saturating_sub(state.step_started_ms),
            candidate.requests
        );
        if state.step + 1 >= s.steps.len() {
            self.end(state, Phase::Promoted, passed, None);
            return;
        }
        state.step += 1;
        state.step_started_ms = now;
        for arm in &self.arms {
            arm.reset();
        }
        self.share
            .store(s.steps[state.step] * 100, Ordering::Release);
        let percent = f64::from(s.steps[state.step]);
        self.push_event(state, "step", percent, passed.clone());
        self.report("step", passed, None);
    }

    /// The threshold the candidate breaches, if any. Its ratios are taken
    /// over at least `min_requests`, so that a breach found early (one
    /// failure too many already) is a breach whatever follows.
    fn breach(
        &self,
        candidate: &Counts,
        stable: &Counts,
        baseline: Option<Baseline>,
    ) -> Option<String> {
        let s = &self.settings;
        let floor = |n: u64| n.max(s.min_requests);
        let failures = ratio(candidate.failures, floor(candidate.requests));
        if failures > s.max_failure_ratio {
            return Some(format!(
                "plugin failures: {} of {} candidate requests, over max_failure_ratio {}",
                candidate.failures, candidate.requests, s.max_failure_ratio
            ));
        }
        // The stable version's ratios: this step's if it had enough
        // requests, else the last step's.
        let reference = if stable.requests >= s.min_requests {
            Some(Baseline {
                refusal_ratio: ratio(stable.refusals, stable.requests),
                error_5xx_ratio: ratio(stable.errors_5xx, stable.responses),
            })
        } else {
            baseline
        };
        let reference = reference?;
        let refusals = ratio(candidate.refusals, floor(candidate.requests));
        if refusals - reference.refusal_ratio > s.max_refusal_increase {
            return Some(format!(
                "refusals: {} of {} candidate requests ({:.1}%) against {:.1}% for the stable version, over max_refusal_increase {}",
                candidate.refusals,
                candidate.requests,
                refusals * 100.0,
                reference.refusal_ratio * 100.0,
                s.max_refusal_increase
            ));
        }
        let errors = ratio(candidate.errors_5xx, floor(candidate.responses));
        if errors - reference.error_5xx_ratio > s.max_5xx_increase {
            return Some(format!(
                "upstream 5xx: {} of {} candidate responses ({:.1}%) against {:.1}% for the stable version, over max_5xx_increase {}",
                candidate.errors_5xx,
                candidate.responses,
                errors * 100.0,
                reference.error_5xx_ratio * 100.0,
                s.max_5xx_increase
            ));
        }
        None
    }

    /// Ends the rollout: the share goes to all or nothing in one store.
    fn end(&self, state: &mut State, phase: Phase, reason: String, token: Option<String>) {
        let share = if phase == Phase::Promoted { ALL } else { 0 };
        self.share.store(share, Ordering::Release);
        state.phase = phase;
        state.reason = Some(reason.clone());
        state.ended_at = Some(Instant::now());
        let event = match phase {
            Phase::Promoted => "promoted",
            Phase::Aborted => "aborted",
            _ => "rolled_back",
        };
        self.push_event(state, event, f64::from(share) / 100.0, reason.clone());
        if share == 0 && self.in_flight.load(Ordering::Acquire) == 0 {
            state.drained_us = Some(0);
        }
        self.book.keep(&self.info.key, phase, &reason);
        self.report(event, reason, token);
    }

    /// The last candidate call in flight after a rollback has finished.
    fn drained(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(ended), None) = (state.ended_at, state.drained_us) {
            state.drained_us = Some(u64::try_from(ended.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }

    fn push_event(&self, state: &mut State, event: &'static str, percent: f64, reason: String) {
        if state.events.len() == EVENTS_KEPT {
            state.events.remove(0);
        }
        state.events.push(Event {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            event,
            percent,
            reason,
        });
    }

    /// Audit record and alert, off the request's thread.
    fn report(&self, event: &'static str, reason: String, token: Option<String>) {
        let book = self.book.clone();
        let info = self.info.clone();
        let percent = f64::from(self.share.load(Ordering::Acquire)) / 100.0;
        let time_ms = self.clock.now_ms();
        let job = move || book.report(&info, event, percent, &reason, token, time_ms);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(job);
            }
            Err(_) => job(),
        }
    }

    /// An operator's command; `token` is the fingerprint of the admin
    /// token it came with. Returns what the rollout does now, or why the
    /// command does not apply.
    pub fn command(&self, command: Command, token: Option<String>) -> Result<Phase, String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.phase.ended() {
            return Err(format!(
                "the rollout has ended ({}): change the candidate to start another",
                serde_json::to_value(state.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
        let percent = f64::from(self.share.load(Ordering::Acquire)) / 100.0;
        match command {
            Command::Pause => {
                state.phase = Phase::Paused;
                self.push_event(&mut state, "paused", percent, "by an operator".into());
                self.report("paused", "by an operator".into(), token);
            }
            Command::Resume => {
                state.phase = Phase::Running;
                state.step_started_ms = self.clock.now_ms();
                self.push_event(&mut state, "resumed", percent, "by an operator".into());
                self.report("resumed", "by an operator".into(), token);
            }
            Command::Promote => {
                self.end(
                    &mut state,
                    Phase::Promoted,
                    "promoted by an operator".into(),
                    token,
                );
            }
            Command::Abort => {
                self.end(
                    &mut state,
                    Phase::Aborted,
                    "aborted by an operator".into(),
                    token,
                );
            }
        }
        Ok(state.phase)
    }

    /// What the admin API shows.
    pub fn report_json(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &self.settings;
        serde_json::json!({
            "route": &*self.info.route,
            "plugin": &*self.info.plugin,
            "module": &*self.info.module,
            "sha256": self.info.sha256,
            "config_keys": self.info.config_keys,
            "phase": state.phase,
            "percent": f64::from(self.share.load(Ordering::Acquire)) / 100.0,
            "step": state.step + 1,
            "steps": s.steps,
            "step_started_ms": state.step_started_ms,
            "sticky": match &s.sticky {
                HashOn::ClientIp => "client_ip".to_owned(),
                HashOn::Consumer => "consumer".to_owned(),
                HashOn::Header(name) => format!("header:{name}"),
            },
            "stable": self.arms[Arm::Stable as usize].read(),
            "candidate": self.arms[Arm::Candidate as usize].read(),
            "baseline": state.baseline,
            "reason": state.reason,
            "candidate_in_flight": self.in_flight.load(Ordering::Acquire),
            "drained_us": state.drained_us,
            "events": state.events,
        })
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// How a rollout ended, as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    /// Promoted, rolled back or aborted.
    pub phase: Phase,
    /// Why.
    pub reason: String,
    /// When, RFC 3339.
    pub time: String,
}

/// Where rollouts report: the kept outcomes (`rollouts.json` in the state
/// directory), the audit trail and the alerts.
pub struct RolloutBook {
    file: Option<PathBuf>,
    kept: Mutex<BTreeMap<String, Kept>>,
    audit: Option<Arc<AuditLog>>,
    alerts: AlertSender,
}

impl std::fmt::Debug for RolloutBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutBook")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl RolloutBook {
    /// The book kept in `file` (none: outcomes last until the process
    /// ends), reporting to `audit` and `alerts`.
    pub fn open(file: Option<PathBuf>, audit: Option<Arc<AuditLog>>, alerts: AlertSender) -> Self {
        let kept = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| match serde_json::from_str(&text) {
                Ok(kept) => Some(kept),
                Err(e) => {
                    tracing::warn!(
                        "rollout outcomes in {}: {e}; starting afresh",
                        file.as_ref()
                            .map_or(String::new(), |f| f.display().to_string())
                    );
                    None
                }
            })
            .unwrap_or_default();
        Self {
            file,
            kept: Mutex::new(kept),
            audit,
            alerts,
        }
    }

    fn kept(&self, key: &str) -> Option<Kept> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Keeps how the rollout `key` ended (written off the request's thread
    /// by [`RolloutBook::report`]'s caller's task).
    fn keep(&self, key: &str, phase: Phase, reason: &str) {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                key.to_owned(),
                Kept {
                    phase,
                    reason: reason.to_owned(),
                    time: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                        .to_string(),
                },
            );
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let text = {
            let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            serde_json::to_string_pretty(&*kept).unwrap_or_default()
        };
        let tmp = file.with_extension("json.tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::error!("cannot keep rollout outcomes in {}: {e}", file.display());
        }
    }

    /// Writes an event: the kept outcomes, an audit record, an alert, a
    /// log line. Blocking (file writes).
    fn report(
        &self,
        info: &CanaryInfo,
        event: &'static str,
        percent: f64,
        reason: &str,
        token: Option<String>,
        time_ms: u64,
    ) {
        self.save();
        let severity = match event {
            "rolled_back" => Severity::Critical,
            "aborted" | "paused" => Severity::Warning,
            _ => Severity::Info,
        };
        match severity {
            Severity::Critical => {
                tracing::error!(target: "portcullis::rollout", route = %info.route, plugin = %info.plugin, candidate = %info.module, percent, "canary {event}: {reason}")
            }
            Severity::Warning => {
                tracing::warn!(target: "portcullis::rollout", route = %info.route, plugin = %info.plugin, candidate = %info.module, percent, "canary {event}: {reason}")
            }
            Severity::Info => {
                tracing::info!(target: "portcullis::rollout", route = %info.route, plugin = %info.plugin, candidate = %info.module, percent, "canary {event}: {reason}")
            }
        }
        if let Some(audit) = &self.audit {
            let mut cause = serde_json::json!({ "kind": if token.is_some() { "admin" } else { "rollout" }, "plugin": &*info.plugin });
            if let Some(token) = &token {
                cause["token"] = serde_json::json!(token);
            }
            audit.append(serde_json::json!({
                "generation": null,
                "result": format!("rollout_{event}"),
                "reason": reason,
                "cause": cause,
                "modules": [],
                "config_changes": [],
                "rollout": {
                    "route": &*info.route,
                    "plugin": &*info.plugin,
                    "module": &*info.module,
                    "sha256": info.sha256,
                    "percent": percent,
                },
            }));
        }
        self.alerts.send(Alert {
            time_ms,
            severity,
            kind: format!("canary-{}", event.replace('_', "-")),
            message: format!(
                "canary of {} on route {}: {event}: {reason}",
                info.module, info.route
            ),
            plugin: info.plugin.to_string(),
            route: info.route.to_string(),
            labels: vec![
                ("candidate".into(), info.module.to_string()),
                ("sha256".into(), info.sha256.clone()),
                ("percent".into(), percent.to_string()),
            ],
        });
    }
}
