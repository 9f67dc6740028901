//! Candidates of a plugin on a route: `[routes.plugins.shadow]`, a new
//! module or config that sees a copy of live requests and decides nothing.

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

    /// The candidate's config: the live one with the candidate's keys in
    /// place.
    pub fn candidate_config(&self, live: &toml::Table) -> toml::Table {
        let mut config = live.clone();
        for (key, value) in &self.config {
            config.insert(key.clone(), value.clone());
        }
        config
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
