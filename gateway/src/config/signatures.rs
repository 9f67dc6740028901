//! `[signatures]`: which keys plugin modules must be signed with.

use std::path::PathBuf;

use serde::Deserialize;

use super::Problem;
use crate::signing::TrustedKey;

/// Signed plugin modules (see docs/safe-updates.md).
///
/// ```toml
/// [signatures]
/// required = true
/// trusted_keys = ["keys/release.pub", "keys/ci.pub"]
/// wait_ms = 10000   # how long a new module waits for its signature
/// ```
///
/// With `required`, a module is loaded only with a `<name>.wasm.sig`
/// from one of `trusted_keys`, checked before it is compiled; otherwise
/// it is refused and the version loaded before keeps serving. Without
/// it, a valid signature is still checked and shown, and a module
/// without one loads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturesConfig {
    /// Refuse modules without a valid signature from a trusted key.
    #[serde(default)]
    pub required: bool,
    /// Public keys (PEM, Ed25519 SubjectPublicKeyInfo) modules may be
    /// signed with.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// How long a module copied in before its signature waits for it.
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u64,
    /// The keys of `trusted_keys`, read (not a key).
    #[serde(skip)]
    pub keys: Vec<TrustedKey>,
}

fn default_wait_ms() -> u64 {
    10_000
}

impl SignaturesConfig {
    pub(super) fn resolve_paths(&mut self, resolve: &impl Fn(&mut PathBuf)) {
        self.trusted_keys.iter_mut().for_each(resolve);
    }

    /// Reads `trusted_keys` into `keys`.
    pub(super) fn read_keys(&mut self) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.keys.clear();
        for (i, path) in self.trusted_keys.iter().enumerate() {
            match TrustedKey::load(path) {
                Ok(key) => self.keys.push(key),
                Err(message) => problems.push(Problem {
                    key: format!("signatures.trusted_keys[{i}]"),
                    message,
                }),
            }
        }
        problems
    }
}

pub(super) fn validate(signatures: &SignaturesConfig, problems: &mut Vec<Problem>) {
    if signatures.required && signatures.trusted_keys.is_empty() {
        problems.push(Problem {
            key: "signatures.trusted_keys".into(),
            message: "`required = true` needs at least one trusted public key (`portcullis keygen` makes a pair)".into(),
        });
    }
    if signatures.wait_ms > 600_000 {
        problems.push(Problem {
            key: "signatures.wait_ms".into(),
            message: format!("must be at most 600000, got {}", signatures.wait_ms),
        });
    }
}
