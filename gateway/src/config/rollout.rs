//! Candidates of a plugin on a route: `[routes.plugins.shadow]`, a new
//! module or config that sees a copy of live requests and decides nothing,
//! and `[routes.plugins.canary]`, one that takes a growing share of them.

use serde::Deserialize;

/// A shadow candidate: another module, another config, or both, run on a
/// copy of each request the live plugin sees, off the request's path. Its
/// decisions are compared with the live plugin's and counted; nothing it
/// decides reaches the client or the upstream.
///
/// ```toml
/// [[routes.plugins]]
/// name = "rate_limit"
/// config = { by = ["consumer"], limits = [{ rate = 50, per = "second" }] }
/// [routes.plugins.shadow]
/// module = "rate_limit_next"      # rate_limit_next.wasm; default: the live module
/// config = { limits = [{ rate = 10, per = "second" }] }   # replaces these keys of the live config
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The candidate's module, `<module>.wasm` in the plugin directory;
    /// by default the live plugin's.
    #[serde(default)]
    pub module: Option<String>,
    /// Keys of the plugin's config the candidate sets otherwise: each
    /// replaces the live config's key of that name (the others are the
    /// live config's, files included).
    #[serde(default)]
    pub config: toml::Table,
    /// Requests waiting for the candidate at most; past it a copy is
    /// dropped (and counted) rather than wait.
    #[serde(default = "ShadowConfig::default_queue")]
    pub queue: usize,
    /// Disagreements kept as samples (the latest), with their requests'
    /// sensitive headers redacted.
    #[serde(default = "ShadowConfig::default_samples")]
    pub samples: usize,
}

impl ShadowConfig {
    fn default_queue() -> usize {
        1024
    }

    fn default_samples() -> usize {
        100
    }

    pub(super) fn validate(&self, key: &str, bad: &mut impl FnMut(String, String)) {
        if let Some(module) = &self.module
            && let Err(why) = super::check_plugin_name(module)
        {
            bad(format!("{key}.module"), why);
        }
        if !(1..=65_536).contains(&self.queue) {
            bad(
                format!("{key}.queue"),
                format!("must be between 1 and 65536, got {}", self.queue),
            );
        }
        if self.samples > 10_000 {
            bad(
                format!("{key}.samples"),
                format!("must be at most 10000, got {}", self.samples),
            );
        }
    }
}

/// A canary: a candidate (another module, another config, or both) that
/// takes a share of the route's requests, raised in steps, and is promoted
/// when it stays within the thresholds, or rolled back at once when it
/// breaches one.
///
/// ```toml
/// [routes.plugins.canary]
/// module = "rbac_next"            # rbac_next.wasm; default: the live module
/// config = { rules = [] }         # replaces these keys of the live config
/// steps = [10, 50, 100]           # percent of requests, in turn
/// step_ms = 300000                # at least this long at each step
/// min_requests = 20               # and this many candidate requests
/// sticky = "consumer"             # client_ip (default), consumer, header:NAME
/// max_failure_ratio = 0.01        # candidate plugin failures / its requests
/// max_5xx_increase = 0.05         # its upstream 5xx ratio over the stable one's
/// max_refusal_increase = 0.10     # its refusal ratio over the stable one's
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The candidate's module; by default the live plugin's.
    #[serde(default)]
    pub module: Option<String>,
    /// Keys of the plugin's config the candidate sets otherwise.
    #[serde(default)]
    pub config: toml::Table,
    /// The candidate's share of requests at each step, in percent,
    /// rising; the last step's end is the promotion.
    #[serde(default = "CanaryConfig::default_steps")]
    pub steps: Vec<u32>,
    /// The least time at each step, in ms.
    #[serde(default = "CanaryConfig::default_step_ms")]
    pub step_ms: u64,
    /// The least candidate requests at each step, before it moves on; also
    /// how many it must have served before its ratios are judged.
    #[serde(default = "CanaryConfig::default_min_requests")]
    pub min_requests: u64,
    /// What keeps a caller on one version.
    #[serde(default = "CanaryConfig::default_sticky")]
    pub sticky: super::HashOn,
    /// The highest share of the candidate's calls that may fail (trap,
    /// deadline, memory, invalid result).
    #[serde(default = "CanaryConfig::default_failure_ratio")]
    pub max_failure_ratio: f64,
    /// How much higher the candidate's share of upstream 5xx may be than
    /// the stable version's.
    #[serde(
        default = "CanaryConfig::default_5xx_increase",
        rename = "max_5xx_increase"
    )]
    pub max_5xx_increase: f64,
    /// How much higher the candidate's share of refusals (a status it
    /// answered) may be than the stable version's.
    #[serde(default = "CanaryConfig::default_refusal_increase")]
    pub max_refusal_increase: f64,
}

impl CanaryConfig {
    fn default_steps() -> Vec<u32> {
        vec![10, 50, 100]
    }

    fn default_step_ms() -> u64 {
        300_000
    }

    fn default_min_requests() -> u64 {
        20
    }

    fn default_sticky() -> super::HashOn {
        super::HashOn::ClientIp
    }

    fn default_failure_ratio() -> f64 {
        0.01
    }

    fn default_5xx_increase() -> f64 {
        0.05
    }

    fn default_refusal_increase() -> f64 {
        0.10
    }

    pub(super) fn validate(&self, key: &str, bad: &mut impl FnMut(String, String)) {
        if let Some(module) = &self.module
            && let Err(why) = super::check_plugin_name(module)
        {
            bad(format!("{key}.module"), why);
        }
        if self.steps.is_empty()
            || self.steps.iter().any(|s| !(1..=100).contains(s))
            || self.steps.windows(2).any(|w| w[0] >= w[1])
        {
            bad(
                format!("{key}.steps"),
                format!(
                    "must be rising percents between 1 and 100, got {:?}",
                    self.steps
                ),
            );
        }
        if self.step_ms > 86_400_000 {
            bad(
                format!("{key}.step_ms"),
                format!("must be at most 86400000 (a day), got {}", self.step_ms),
            );
        }
        if self.min_requests == 0 {
            bad(format!("{key}.min_requests"), "must be at least 1".into());
        }
        for (name, value) in [
            ("max_failure_ratio", self.max_failure_ratio),
            ("max_5xx_increase", self.max_5xx_increase),
            ("max_refusal_increase", self.max_refusal_increase),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bad(
                    format!("{key}.{name}"),
                    format!("must be between 0 and 1, got {value}"),
                );
            }
        }
    }
}
