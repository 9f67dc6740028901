//! The plugin's configuration and its validation.

use std::collections::HashMap;

use portcullis_plugin_kit::cache::VerifiedCache;
use portcullis_plugin_kit::http::quoted_string;
use portcullis_plugin_kit::identity::IdentityHeadersConfig;
use portcullis_sdk::Identity;
use serde::Deserialize;

use crate::hash::PasswordHash;
use crate::{BasicAuth, User, htpasswd};

/// The configuration of one route's `basic_auth` plugin.
///
/// ```toml
/// [[routes.plugins]]
/// name = "basic_auth"
/// files = { htpasswd = "users.htpasswd" }   # optional: read into `htpasswd`
/// config = { realm = "ops", users = [
///     { username = "alice", password_hash = "$2y$10$...", roles = ["admin"], tenant = "acme" },
///     { username = "bob", roles = ["reader"] },   # password from the htpasswd text
/// ] }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The realm of the `WWW-Authenticate: Basic realm="..."` challenge.
    #[serde(default = "default_realm")]
    realm: String,
    /// Whether to strip the `Authorization` header before the upstream.
    #[serde(default = "default_true")]
    hide_credentials: bool,
    /// Users with their hash and/or their roles and tenant.
    #[serde(default)]
    users: Vec<UserConfig>,
    /// htpasswd text: `user:hash` lines.
    #[serde(default)]
    htpasswd: Option<String>,
    /// How long a successful verification is remembered, in seconds; 0
    /// turns the cache off.
    #[serde(default = "default_cache_ttl_seconds")]
    cache_ttl_seconds: u64,
    /// The most successful verifications remembered per instance; 0 turns
    /// the cache off.
    #[serde(default = "default_cache_size")]
    cache_size: usize,
    /// Headers that carry the identity to the upstream.
    #[serde(default)]
    identity_headers: IdentityHeadersConfig,
}

/// One user: a password hash (or an htpasswd line of the same name), and
/// the roles and tenant of the identity.
///
/// ```toml
/// { username = "alice", password_hash = "$2y$10$...", roles = ["admin"], tenant = "acme" }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserConfig {
    /// The user name, as sent by the client; becomes the identity's consumer.
    username: String,
    /// A bcrypt or argon2 hash; unset when the htpasswd text has the user.
    #[serde(default)]
    password_hash: Option<String>,
    /// Roles granted to the user.
    #[serde(default)]
    roles: Vec<String>,
    /// The user's tenant.
    #[serde(default)]
    tenant: Option<String>,
}

fn default_realm() -> String {
    "portcullis".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_cache_ttl_seconds() -> u64 {
    60
}

fn default_cache_size() -> usize {
    1024
}

/// What building the plugin from a configuration produced: the plugin and
/// the warnings to log.
pub(crate) type Built = portcullis_plugin_kit::config::Built<BasicAuth>;

impl Config {
    /// Validates the configuration and builds the user table. Reports every
    /// problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Built, String> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        if !is_printable_ascii(&self.realm) {
            problems.push("realm: must be printable ASCII".to_owned());
        }

        // The htpasswd entries first: `users` entries without a hash refer
        // to them.
        let mut from_file: HashMap<String, (usize, PasswordHash)> = HashMap::new();
        if let Some(text) = &self.htpasswd {
            let (lines, mut bad) = htpasswd::parse(text);
            problems.append(&mut bad);
            for line in lines {
                let number = line.number;
                if let Err(why) = check_username(line.username) {
                    problems.push(format!("htpasswd line {number}: {why}"));
                    continue;
                }
                if let Some((first, _)) = from_file.get(line.username) {
                    problems.push(format!(
                        "htpasswd line {number}: user `{}` is already on line {first}",
                        line.username
                    ));
                    continue;
                }
                match PasswordHash::parse(line.hash) {
                    Ok(hash) => {
                        if let Some(warning) = hash.cost_warning() {
                            warnings.push(format!("htpasswd line {number}: {warning}"));
                        }
                        from_file.insert(line.username.to_owned(), (number, hash));
                    }
                    Err(why) => problems.push(format!(
                        "htpasswd line {number} (user `{}`): {why}",
                        line.username
                    )),
                }
            }
        }

        let mut users: Vec<User> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut seen_in_users: HashMap<String, usize> = HashMap::new();
        for (i, entry) in self.users.into_iter().enumerate() {
            if let Err(why) = check_username(&entry.username) {
                problems.push(format!("users[{i}].username: {why}"));
                continue;
            }
            if let Some(first) = seen_in_users.get(&entry.username) {
                problems.push(format!(
                    "users[{i}].username: `{}` is already users[{first}]",
                    entry.username
                ));
                continue;
            }
            seen_in_users.insert(entry.username.clone(), i);
            let hash = match (&entry.password_hash, from_file.remove(&entry.username)) {
                (Some(_), Some((line, _))) => {
                    problems.push(format!(
                        "users[{i}].password_hash: `{}` also has a hash on htpasswd line {line}; keep one",
                        entry.username
                    ));
                    continue;
                }
                (Some(text), None) => match PasswordHash::parse(text) {
                    Ok(hash) => {
                        if let Some(warning) = hash.cost_warning() {
                            warnings.push(format!("users[{i}].password_hash: {warning}"));
                        }
                        hash
                    }
                    Err(why) => {
                        problems.push(format!("users[{i}].password_hash: {why}"));
                        continue;
                    }
                },
                (None, Some((_, hash))) => hash,
                (None, None) => {
                    problems.push(format!(
                        "users[{i}]: `{}` has no `password_hash` and no htpasswd line",
                        entry.username
                    ));
                    continue;
                }
            };
            if entry.roles.iter().any(|role| role.trim().is_empty()) {
                problems.push(format!("users[{i}].roles: a role is empty"));
            }
            if entry.tenant.as_deref().is_some_and(|t| t.trim().is_empty()) {
                problems.push(format!("users[{i}].tenant: must not be empty"));
            }
            let mut identity = Identity::new(entry.username.clone()).roles(entry.roles);
            identity.tenant = entry.tenant;
            index.insert(entry.username, users.len());
            users.push(User { identity, hash });
        }
        // htpasswd users that `users` did not mention: no roles, no tenant.
        let mut rest: Vec<(String, (usize, PasswordHash))> = from_file.into_iter().collect();
        rest.sort_by_key(|(_, (line, _))| *line);
        for (username, (_, hash)) in rest {
            index.insert(username.clone(), users.len());
            users.push(User {
                identity: Identity::new(username),
                hash,
            });
        }

        if users.is_empty() && problems.is_empty() {
            problems.push(
                "users, htpasswd: no user is configured; add `users` entries with a `password_hash` or `htpasswd` lines"
                    .to_owned(),
            );
        }

        let identity_headers = self
            .identity_headers
            .build("identity_headers", &mut problems);

        let ttl_ms = self.cache_ttl_seconds.saturating_mul(1000);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Built {
            plugin: BasicAuth {
                challenge: challenge(&self.realm),
                hide_credentials: self.hide_credentials,
                users,
                index,
                cache: std::cell::RefCell::new(VerifiedCache::new(self.cache_size, ttl_ms)),
                identity_headers,
            },
            warnings,
        })
    }
}

/// Why `name` cannot be a Basic user name, if it cannot: the user name of
/// Basic credentials ends at the first `:`, and control characters cannot
/// be typed.
fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.contains(':') {
        return Err(format!(
            "`{name}` contains `:`, which Basic credentials cannot carry in a user name"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// A lowercase header name, or a problem naming `key` if it is not one.
fn is_printable_ascii(text: &str) -> bool {
    text.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// The `WWW-Authenticate` value for `realm`, quoted as RFC 9110 says, with
/// the `charset` parameter of RFC 7617 (user names and passwords are read
/// as UTF-8).
fn challenge(realm: &str) -> String {
    format!("Basic realm={}, charset=\"UTF-8\"", quoted_string(realm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::tests::{ARGON2_HUNTER2, BCRYPT_SECRET};

    portcullis_plugin_kit::config_test_helpers!(Config => Built);

    fn user<'a>(plugin: &'a BasicAuth, name: &str) -> &'a User {
        &plugin.users[plugin.index[name]]
    }

    #[test]
    fn defaults_apply() {
        let built = build(serde_json::json!({
            "users": [{ "username": "alice", "password_hash": BCRYPT_SECRET }]
        }))
        .expect("valid");
        let plugin = built.plugin;
        assert_eq!(
            plugin.challenge,
            r#"Basic realm="portcullis", charset="UTF-8""#
        );
        assert!(plugin.hide_credentials);
        assert!(plugin.cache.borrow().enabled());
        assert_eq!(user(&plugin, "alice").identity, Identity::new("alice"));
        assert_eq!(plugin.identity_headers.consumer, None);
        assert!(built.warnings.is_empty());
    }

    #[test]
    fn every_field_is_read() {
        let built = build(serde_json::json!({
            "realm": "the \"zoo\"",
            "hide_credentials": false,
            "cache_ttl_seconds": 0,
            "cache_size": 10,
            "identity_headers": { "consumer": "X-Consumer", "roles": "x-roles", "tenant": "x-tenant" },
            "users": [
                { "username": "alice", "password_hash": BCRYPT_SECRET, "roles": ["admin", "ops"], "tenant": "acme" },
                { "username": "bob", "roles": ["reader"] },
            ],
            "htpasswd": format!("bob:{ARGON2_HUNTER2}\ncarol:{BCRYPT_SECRET}\n"),
        }))
        .expect("valid");
        let plugin = built.plugin;
        assert_eq!(
            plugin.challenge,
            r#"Basic realm="the \"zoo\"", charset="UTF-8""#
        );
        assert!(!plugin.hide_credentials);
        assert!(!plugin.cache.borrow().enabled());
        assert_eq!(
            plugin.identity_headers.consumer.as_deref(),
            Some("x-consumer")
        );
        assert_eq!(plugin.identity_headers.roles.as_deref(), Some("x-roles"));
        assert_eq!(plugin.identity_headers.tenant.as_deref(), Some("x-tenant"));
        assert_eq!(
            user(&plugin, "alice").identity,
            Identity::new("alice")
                .roles(["admin", "ops"])
                .tenant("acme")
        );
        let bob = user(&plugin, "bob");
        assert_eq!(bob.identity, Identity::new("bob").roles(["reader"]));
        assert!(
            bob.hash.verify(b"hunter2"),
            "bob's hash comes from htpasswd"
        );
        assert_eq!(user(&plugin, "carol").identity, Identity::new("carol"));
        assert_eq!(plugin.users.len(), 3);
    }

    #[test]
    fn htpasswd_alone_is_enough() {
        let built = build(serde_json::json!({
            "htpasswd": format!("# ops\nalice:{BCRYPT_SECRET}\n"),
        }))
        .expect("valid");
        assert_eq!(built.plugin.users.len(), 1);
        assert!(user(&built.plugin, "alice").hash.verify(b"secret"));
    }

    #[test]
    fn problems_name_their_key() {
        let cases = [
            (
                serde_json::json!({}),
                "users, htpasswd: no user is configured",
            ),
            (
                serde_json::json!({ "htpasswd": "\n# nobody\n" }),
                "users, htpasswd: no user is configured",
            ),
            (
                serde_json::json!({ "realm": "caf\u{e9}", "htpasswd": format!("a:{BCRYPT_SECRET}") }),
                "realm: must be printable ASCII",
            ),
            (
                serde_json::json!({ "users": [{ "username": "", "password_hash": BCRYPT_SECRET }] }),
                "users[0].username: must not be empty",
            ),
            (
                serde_json::json!({ "users": [{ "username": "a:b", "password_hash": BCRYPT_SECRET }] }),
                "users[0].username: `a:b` contains `:`",
            ),
            (
                serde_json::json!({ "users": [
                    { "username": "a", "password_hash": BCRYPT_SECRET },
                    { "username": "a", "password_hash": BCRYPT_SECRET },
                ] }),
                "users[1].username: `a` is already users[0]",
            ),
            (
                serde_json::json!({ "users": [{ "username": "a", "password_hash": "$apr1$x$y" }] }),
                "users[0].password_hash: unsupported hash `$apr1$` (Apache MD5)",
            ),
            (
                serde_json::json!({ "users": [{ "username": "a" }] }),
                "users[0]: `a` has no `password_hash` and no htpasswd line",
            ),
            (
                serde_json::json!({
                    "users": [{ "username": "a", "password_hash": BCRYPT_SECRET }],
                    "htpasswd": format!("\na:{BCRYPT_SECRET}"),
                }),
                "users[0].password_hash: `a` also has a hash on htpasswd line 2; keep one",
            ),
            (
                serde_json::json!({ "users": [{ "username": "a", "password_hash": BCRYPT_SECRET, "roles": [""] }] }),
                "users[0].roles: a role is empty",
            ),
            (
                serde_json::json!({ "users": [{ "username": "a", "password_hash": BCRYPT_SECRET, "tenant": " " }] }),
                "users[0].tenant: must not be empty",
            ),
            (
                serde_json::json!({ "htpasswd": format!("a:{BCRYPT_SECRET}\na:{BCRYPT_SECRET}") }),
                "htpasswd line 2: user `a` is already on line 1",
            ),
            (
                serde_json::json!({ "htpasswd": "a:{SHA}xyz" }),
                "htpasswd line 1 (user `a`): unsupported hash `{SHA}`",
            ),
            (
                serde_json::json!({ "htpasswd": "just-a-name" }),
                "htpasswd line 1: expected `user:hash`",
            ),
            (
                serde_json::json!({
                    "htpasswd": format!("a:{BCRYPT_SECRET}"),
                    "identity_headers": { "roles": "x roles" },
                }),
                "identity_headers.roles: `x roles` is not a valid header name",
            ),
        ];
        portcullis_plugin_kit::testing::assert_problems(cases, Config::build);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = problems(serde_json::json!({
            "realm": "\u{7}",
            "users": [{ "username": "a" }, { "username": "b", "password_hash": "x" }],
        }));
        assert_eq!(err.matches("; ").count(), 2, "{err}");
    }

    #[test]
    fn expensive_hashes_are_accepted_with_a_warning() {
        let slow = BCRYPT_SECRET.replacen("$04$", "$13$", 1);
        let built = build(serde_json::json!({
            "users": [{ "username": "a", "password_hash": slow }],
            "htpasswd": format!("b:{}", ARGON2_HUNTER2.replacen("m=64,", "m=40000,", 1)),
        }))
        .expect("valid");
        assert_eq!(built.warnings.len(), 2, "{:?}", built.warnings);
        assert!(built.warnings[0].starts_with("htpasswd line 1: argon2 memory cost 40000 KiB"));
        assert!(built.warnings[1].starts_with("users[0].password_hash: bcrypt cost 13"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_value::<Config>(serde_json::json!({ "user": [] }))
            .err()
            .expect("unknown key");
        assert!(err.to_string().contains("unknown field `user`"), "{err}");
    }
}
