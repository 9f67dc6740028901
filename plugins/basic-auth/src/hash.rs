//! Password hashes: parsing them from the configuration, verifying a
//! password against one.

use argon2::{Argon2, Params, PasswordHash as PhcHash, PasswordVerifier};

/// Bcrypt costs above this get a warning at load time: one verification
/// at cost 10 took about [`BCRYPT_COST_10_MS`] in the gateway (wasm, a
/// loaded 2-core machine), and each step doubles it, which reaches the
/// gateway's default `limits.plugin_timeout_ms` (50).
pub(crate) const BCRYPT_COST_WARNING: u32 = 9;

/// The measured time of one bcrypt verification at cost 10, in ms.
const BCRYPT_COST_10_MS: u64 = 55;

/// Argon2 memory costs (KiB) above this get a warning at load time: every
/// verification needs that much of the plugin's linear memory.
pub(crate) const ARGON2_MEMORY_WARNING_KIB: u32 = 32 * 1024;

/// Argon2 work (memory cost in KiB times passes) above this gets a warning
/// at load time: m=19456, t=2 (OWASP's suggestion, 38912) took about 28 ms
/// in the gateway, so this is about 40 ms.
const ARGON2_WORK_WARNING: u64 = 55_000;

/// A password hash that a password can be verified against.
#[derive(Debug, Clone)]
pub(crate) enum PasswordHash {
    /// A bcrypt hash, `$2a$`, `$2b$`, `$2x$` or `$2y$`, as written (60
    /// characters, validated at load time).
    Bcrypt { hash: String, cost: u32 },
    /// An argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    Argon2(Box<PhcHash>),
}

impl PasswordHash {
    /// Parses a hash from the configuration; the error says what is wrong,
    /// without repeating the hash.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|prefix| text.starts_with(prefix))
        {
            let parts: bcrypt::HashParts = text
                .parse()
                .map_err(|e| format!("not a valid bcrypt hash ({e})"))?;
            let cost = parts.get_cost();
            if !(4..=31).contains(&cost) {
                return Err(format!("bcrypt cost {cost} is outside 4..=31"));
            }
            return Ok(PasswordHash::Bcrypt {
                hash: text.to_owned(),
                cost,
            });
        }
        if text.starts_with("$argon2") {
            let hash = PhcHash::new(text).map_err(|e| format!("not a valid argon2 hash ({e})"))?;
            argon2::Algorithm::try_from(hash.algorithm.as_str())
                .map_err(|_| format!("unknown argon2 variant `{}`", hash.algorithm))?;
            Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters ({e})"))?;
            if hash.salt.is_none() || hash.hash.is_none() {
                return Err("an argon2 hash needs a salt and a hash".to_owned());
            }
            return Ok(PasswordHash::Argon2(Box::new(hash)));
        }
        Err(format!(
            "unsupported hash {}: use bcrypt (`htpasswd -nbB user password`) or argon2 (`$argon2id$...`)",
            describe_scheme(text)
        ))
    }

    /// Whether `password` matches. Never panics; a hash that cannot be
    /// computed counts as a mismatch.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt { hash, .. } => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Argon2(hash) => Argon2::default()
                .verify_password(password, hash.as_ref())
                .is_ok(),
        }
    }

    /// A warning about the cost of verifying against this hash, if it is
    /// high enough to risk the plugin's time or memory limits.
    pub(crate) fn cost_warning(&self) -> Option<String> {
        match self {
            PasswordHash::Bcrypt { cost, .. } if *cost > BCRYPT_COST_WARNING => {
                // Costs here are 10 or more.
                let estimate = BCRYPT_COST_10_MS << cost.saturating_sub(10).min(21);
                Some(format!(
                    "bcrypt cost {cost} takes about {estimate} ms to verify in the gateway (cost 10 about {BCRYPT_COST_10_MS} ms, each step doubles it): give this plugin entry a `timeout_ms` well above that (or raise limits.plugin_timeout_ms, 50 by default), or use a lower cost"
                ))
            }
            PasswordHash::Argon2(hash) => {
                let params = Params::try_from(hash.as_ref()).ok()?;
                let memory = params.m_cost();
                let work = u64::from(memory) * u64::from(params.t_cost());
                if memory > ARGON2_MEMORY_WARNING_KIB {
                    Some(format!(
                        "argon2 memory cost {memory} KiB: every verification needs that much plugin memory (limits.plugin_memory_mib)"
                    ))
                } else if work > ARGON2_WORK_WARNING {
                    Some(format!(
                        "argon2 parameters m={memory} KiB, t={} take about {} ms to verify in the gateway: give this plugin entry a `timeout_ms` well above that (or raise limits.plugin_timeout_ms, 50 by default)",
                        params.t_cost(),
                        work * 28 / 38_912
                    ))
                } else {
                    None
                }
            }
            PasswordHash::Bcrypt { .. } => None,
        }
    }
}

/// A name for the scheme of an unsupported hash, for the error message.
fn describe_scheme(text: &str) -> String {
    let known = [
        ("$apr1$", "`$apr1$` (Apache MD5)"),
        ("{SHA}", "`{SHA}` (unsalted SHA-1)"),
        ("$1$", "`$1$` (MD5 crypt)"),
        ("$5$", "`$5$` (SHA-256 crypt)"),
        ("$6$", "`$6$` (SHA-512 crypt)"),
        ("$scrypt$", "`$scrypt$`"),
        ("$pbkdf2", "`$pbkdf2`"),
    ];
    known
        .iter()
        .find(|(prefix, _)| text.starts_with(prefix))
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_else(|| "(not a bcrypt or argon2 hash)".to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `secret` hashed with bcrypt, cost 4.
    pub(crate) const BCRYPT_SECRET: &str =
        "$2y$04$KBCwKxOzLha2MUDgW0PjXe/hE/UCO9qF89dOydoHjSwxcHev5LRn.";
    /// `hunter2` hashed with argon2id, m=64 KiB, t=1, p=1.
    pub(crate) const ARGON2_HUNTER2: &str = "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$/W8LPvoaai7U3XREtgKuI78eDZLHrsDSFj5hpFvetZc";

    #[test]
    fn bcrypt_hashes_verify() {
        let hash = PasswordHash::parse(BCRYPT_SECRET).expect("valid bcrypt");
        assert!(hash.verify(b"secret"));
        assert!(!hash.verify(b"Secret"));
        assert!(!hash.verify(b""));
        assert!(hash.cost_warning().is_none());
        for prefix in ["$2a$", "$2b$", "$2x$"] {
            let other = BCRYPT_SECRET.replacen("$2y$", prefix, 1);
            assert!(PasswordHash::parse(&other).expect(prefix).verify(b"secret"));
        }
    }

    #[test]
    fn argon2_hashes_verify() {
        let hash = PasswordHash::parse(ARGON2_HUNTER2).expect("valid argon2");
        assert!(hash.verify(b"hunter2"));
        assert!(!hash.verify(b"hunter3"));
        assert!(hash.cost_warning().is_none());
    }

    #[test]
    fn malformed_and_unsupported_hashes_are_refused_with_a_reason() {
        let cases = [
            ("$2y$04$tooshort", "not a valid bcrypt hash"),
            (&BCRYPT_SECRET.replacen("$04$", "$03$", 1), "outside 4..=31"),
            (
                &BCRYPT_SECRET.replacen("$04$", "$xx$", 1),
                "not a valid bcrypt hash",
            ),
            (
                "$argon2id$v=19$m=64",
                "an argon2 hash needs a salt and a hash",
            ),
            (
                "$argon2id$v=19$m=64,t=1,p=1$!!$!!",
                "not a valid argon2 hash",
            ),
            (
                "$argon2q$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$zgb0mqcKs6TJcXdG8YFpcXXdk1XYCO6WHa24x0ATtlc",
                "argon2",
            ),
            ("$apr1$abc$def", "`$apr1$` (Apache MD5)"),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "`{SHA}`"),
            ("$6$salt$hash", "`$6$`"),
            ("plaintext", "not a bcrypt or argon2 hash"),
        ];
        for (hash, expected) in cases {
            let err = PasswordHash::parse(hash).expect_err(hash);
            assert!(err.contains(expected), "{hash}: {err}");
        }
    }

    #[test]
    fn expensive_hashes_get_a_warning() {
        let warning = |hash: &str| PasswordHash::parse(hash).expect("valid").cost_warning();
        assert_eq!(warning(&BCRYPT_SECRET.replacen("$04$", "$09$", 1)), None);
        let ten = warning(&BCRYPT_SECRET.replacen("$04$", "$10$", 1)).expect("a warning");
        assert!(ten.starts_with("bcrypt cost 10 takes about 55 ms"), "{ten}");
        assert!(ten.contains("plugin_timeout_ms"), "{ten}");
        let twelve = warning(&BCRYPT_SECRET.replacen("$04$", "$12$", 1)).expect("a warning");
        assert!(
            twelve.starts_with("bcrypt cost 12 takes about 220 ms"),
            "{twelve}"
        );
        assert!(warning(&BCRYPT_SECRET.replacen("$04$", "$31$", 1)).is_some());

        let owasp = ARGON2_HUNTER2.replacen("m=64,t=1", "m=19456,t=2", 1);
        assert_eq!(warning(&owasp), None);
        let slow =
            warning(&ARGON2_HUNTER2.replacen("m=64,t=1", "m=19456,t=3", 1)).expect("a warning");
        assert!(
            slow.starts_with("argon2 parameters m=19456 KiB, t=3 take about 42 ms"),
            "{slow}"
        );

        let big = ARGON2_HUNTER2.replacen("m=64,", "m=65536,", 1);
        let warning = PasswordHash::parse(&big)
            .expect("valid")
            .cost_warning()
            .expect("a warning");
        assert!(warning.contains("plugin_memory_mib"), "{warning}");
    }
}
