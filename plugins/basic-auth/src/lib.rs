//! `basic_auth`: a Portcullis policy plugin that authenticates requests by
//! HTTP Basic credentials (RFC 7617), checked against bcrypt or argon2
//! password hashes from its configuration (a `users` list and/or htpasswd
//! text). See the README for the configuration.
//!
//! A request without Basic credentials, or with a wrong user name or
//! password, is answered with 401 and a `WWW-Authenticate: Basic
//! realm="..."` challenge. A request with good credentials goes on with the
//! user's identity (name, roles, tenant) and the attribute `consumer`, and
//! by default without its `Authorization` header.
//!
//! Password hashes are slow on purpose. Each instance remembers successful
//! verifications for a short time (the plugin kit's `VerifiedCache`, keyed
//! by a salted SHA-256 of the user name and password), so that a client that
//! sends the same credentials on every request pays for one verification
//! per time to live; wrong passwords are never remembered. A user name that
//! does not exist costs a verification too (against another user's hash),
//! so that response times do not tell which user names exist.

use std::cell::RefCell;
use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use portcullis_plugin_kit::cache::VerifiedCache;
use portcullis_plugin_kit::identity::IdentityHeaders;
use portcullis_sdk::{Action, Identity, Policy, Reply, Request, RequestChanges, policy};

mod config;
mod hash;
mod htpasswd;

use config::Config;
use hash::PasswordHash;

/// One route's `basic_auth`, built from a validated [`Config`].
struct BasicAuth {
    /// The `WWW-Authenticate` value of a 401.
    challenge: String,
    /// Whether to strip the `Authorization` header before the upstream.
    hide_credentials: bool,
    /// Every user; at least one.
    users: Vec<User>,
    /// Index into `users`, by user name.
    index: HashMap<String, usize>,
    /// Recent successful verifications. A plugin instance serves one
    /// request at a time, so a `RefCell` is enough.
    cache: RefCell<VerifiedCache<usize>>,
    /// Headers that carry the identity to the upstream.
    identity_headers: IdentityHeaders,
}

/// A user: the identity it stands for and its password hash.
struct User {
    identity: Identity,
    hash: PasswordHash,
}

#[policy]
impl Policy for BasicAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(config.build()?.log_warnings(portcullis_sdk::log::warn))
    }

    fn on_request(&self, req: &Request) -> Action {
        let header = req.header("authorization");
        self.authenticate(header.as_deref(), portcullis_sdk::time::now_ms())
    }
}

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// No header, or another scheme than `Basic`.
    Nothing,
    /// `Basic` with something that is not base64 of `user:password`.
    Malformed,
    /// A user name and password.
    Credentials { username: String, password: Vec<u8> },
}

/// Base64 as RFC 7617 uses it (the standard alphabet), tolerating missing
/// padding, which some clients omit.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads Basic credentials from an `Authorization` header value. The scheme
/// is case-insensitive; the user name ends at the first `:` and must be
/// UTF-8; the password is taken as bytes.
fn read_credentials(header: Option<&str>) -> Presented {
    let Some(value) = header.map(str::trim) else {
        return Presented::Nothing;
    };
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Presented::Nothing;
    }
    let Ok(decoded) = BASE64.decode(rest.trim()) else {
        return Presented::Malformed;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return Presented::Malformed;
    };
    let (username, password) = decoded.split_at(colon);
    match String::from_utf8(username.to_vec()) {
        Ok(username) => Presented::Credentials {
            username,
            password: password[1..].to_vec(),
        },
        Err(_) => Presented::Malformed,
    }
}

impl BasicAuth {
    /// The decision for a request whose `Authorization` header is `header`
    /// (if present), at `now_ms` on the gateway's clock.
    fn authenticate(&self, header: Option<&str>, now_ms: u64) -> Action {
        let (username, password) = match read_credentials(header) {
            Presented::Nothing => return self.reject("no Basic credentials found in request"),
            Presented::Malformed => return self.reject("malformed Basic credentials"),
            Presented::Credentials { username, password } => (username, password),
        };
        match self.verify(&username, &password, now_ms) {
            Some(user) => self.accept(&self.users[user].identity),
            None => self.reject("invalid user name or password"),
        }
    }

    /// The index of the user that `username` and `password` authenticate,
    /// from the cache or by verifying the hash (and then remembered).
    fn verify(&self, username: &str, password: &[u8], now_ms: u64) -> Option<usize> {
        let mut cache = self.cache.borrow_mut();
        let key = cache
            .enabled()
            .then(|| cache.key(&[username.as_bytes(), password]));
        if let Some(&user) = key.as_ref().and_then(|key| cache.get(key, now_ms)) {
            return Some(user);
        }
        let Some(&user) = self.index.get(username) else {
            // Spend the time a real verification takes, so that an unknown
            // user name cannot be told from a wrong password by timing.
            if let Some(first) = self.users.first() {
                let _ = first.hash.verify(password);
            }
            return None;
        };
        if !self.users.get(user)?.hash.verify(password) {
            return None;
        }
        if let Some(key) = key {
            cache.insert(key, user, now_ms, None);
        }
        Some(user)
    }

    /// Lets the request go on as `identity`.
    fn accept(&self, identity: &Identity) -> Action {
        let mut changes = RequestChanges::new().authenticated(identity.clone());
        if self.hide_credentials {
            changes = changes.remove_header("authorization");
        }
        self.identity_headers.apply(changes, identity).into()
    }

    /// A 401 with the challenge and a JSON message.
    fn reject(&self, message: &str) -> Action {
        Reply::unauthorized(self.challenge.as_str(), message).into()
    }
}

#[cfg(test)]
mod tests {
    use portcullis_plugin_kit::testing::{self, continued, json_body, replied};

    use super::*;
    use crate::hash::tests::{ARGON2_HUNTER2, BCRYPT_SECRET};

    fn plugin(extra: serde_json::Value) -> BasicAuth {
        let mut json = serde_json::json!({
            "users": [
                { "username": "alice", "password_hash": BCRYPT_SECRET, "roles": ["admin", "ops"], "tenant": "acme" },
            ],
            "htpasswd": format!("bob:{ARGON2_HUNTER2}\n"),
        });
        if let (Some(base), serde_json::Value::Object(extra)) = (json.as_object_mut(), extra) {
            base.extend(extra);
        }
        testing::valid(json, Config::build).plugin
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    fn alice() -> Identity {
        Identity::new("alice")
            .roles(["admin", "ops"])
            .tenant("acme")
    }

    /// The reply to a refused request and its JSON message.
    fn rejected(action: Action) -> (Reply, String) {
        let reply = replied(action);
        let message = json_body(&reply)["message"]
            .as_str()
            .expect("a message")
            .to_owned();
        (reply, message)
    }

    #[test]
    fn credentials_are_read_from_the_header() {
        let creds = |u: &str, p: &[u8]| Presented::Credentials {
            username: u.to_owned(),
            password: p.to_vec(),
        };
        assert_eq!(
            read_credentials(Some(&basic("alice", "secret"))),
            creds("alice", b"secret")
        );
        assert_eq!(
            read_credentials(Some(&basic("alice", "pa:ss:word"))),
            creds("alice", b"pa:ss:word"),
            "the user name ends at the first colon"
        );
        assert_eq!(
            read_credentials(Some(&basic("alice", ""))),
            creds("alice", b"")
        );
        assert_eq!(
            read_credentials(Some("bAsIc   YWxpY2U6c2VjcmV0  ")),
            creds("alice", b"secret"),
            "scheme case and spacing"
        );
        assert_eq!(read_credentials(Some("Basic YTpi")), creds("a", b"b"),);
        assert_eq!(
            read_credentials(Some("Basic YTpiYw")),
            creds("a", b"bc"),
            "missing padding is tolerated"
        );
        assert_eq!(
            read_credentials(Some(&basic("j\u{f6}rg", "p\u{e4}ss"))),
            creds("j\u{f6}rg", "p\u{e4}ss".as_bytes()),
        );
    }

    #[test]
    fn other_schemes_and_garbage_are_told_apart() {
        assert_eq!(read_credentials(None), Presented::Nothing);
        assert_eq!(read_credentials(Some("")), Presented::Nothing);
        assert_eq!(
            read_credentials(Some("Bearer abc.def.ghi")),
            Presented::Nothing
        );
        assert_eq!(read_credentials(Some("Basically YTpi")), Presented::Nothing);
        assert_eq!(read_credentials(Some("Basic")), Presented::Malformed);
        assert_eq!(read_credentials(Some("Basic !!!")), Presented::Malformed);
        assert_eq!(
            read_credentials(Some("Basic YWxpY2U=")),
            Presented::Malformed,
            "no colon"
        );
        let not_utf8 = base64::engine::general_purpose::STANDARD.encode(b"\xff\xfe:pw");
        assert_eq!(
            read_credentials(Some(&format!("Basic {not_utf8}"))),
            Presented::Malformed
        );
    }

    #[test]
    fn good_credentials_attach_the_identity_and_are_stripped() {
        let auth = plugin(serde_json::json!({}));
        let changes = continued(auth.authenticate(Some(&basic("alice", "secret")), 0));
        assert_eq!(changes.identity, Some(alice()));
        assert_eq!(
            changes.attributes,
            [("consumer".to_owned(), "alice".to_owned())]
        );
        assert_eq!(changes.remove_headers, ["authorization"]);
        assert!(changes.set_headers.is_empty());

        let bob = continued(auth.authenticate(Some(&basic("bob", "hunter2")), 0));
        assert_eq!(
            bob.identity,
            Some(Identity::new("bob")),
            "argon2, from htpasswd"
        );
    }

    #[test]
    fn credentials_stay_when_hide_credentials_is_off() {
        let auth = plugin(serde_json::json!({ "hide_credentials": false }));
        let changes = continued(auth.authenticate(Some(&basic("alice", "secret")), 0));
        assert!(changes.remove_headers.is_empty());
        assert_eq!(changes.identity, Some(alice()));
    }

    #[test]
    fn identity_headers_replace_what_the_client_sent() {
        let auth = plugin(serde_json::json!({
            "identity_headers": { "consumer": "x-consumer", "roles": "x-roles", "tenant": "x-tenant" }
        }));
        let changes = continued(auth.authenticate(Some(&basic("alice", "secret")), 0));
        assert_eq!(
            changes.remove_headers,
            ["authorization", "x-consumer", "x-roles", "x-tenant"]
        );
        assert_eq!(
            changes.set_headers,
            [
                ("x-consumer".to_owned(), "alice".to_owned()),
                ("x-roles".to_owned(), "admin,ops".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned()),
            ]
        );
        let bob = continued(auth.authenticate(Some(&basic("bob", "hunter2")), 0));
        assert_eq!(
            bob.set_headers,
            [("x-consumer".to_owned(), "bob".to_owned())],
            "no roles and no tenant: those headers are only removed"
        );
        assert!(bob.remove_headers.contains(&"x-roles".to_owned()));
    }

    #[test]
    fn missing_malformed_and_wrong_credentials_are_401s_with_a_challenge() {
        let auth = plugin(serde_json::json!({ "realm": "ops" }));
        let alice_wrong = basic("alice", "Secret");
        let nobody = basic("mallory", "secret");
        let bob_wrong = basic("bob", "hunter3");
        let cases = [
            (None, "no Basic credentials found in request"),
            (
                Some("Bearer x.y.z"),
                "no Basic credentials found in request",
            ),
            (Some("Basic %%%"), "malformed Basic credentials"),
            (Some(alice_wrong.as_str()), "invalid user name or password"),
            (Some(nobody.as_str()), "invalid user name or password"),
            (Some(bob_wrong.as_str()), "invalid user name or password"),
        ];
        for (header, expected) in cases {
            let (reply, message) = rejected(auth.authenticate(header, 0));
            assert_eq!(reply.status, 401, "{header:?}");
            assert_eq!(message, expected, "{header:?}");
            assert_eq!(
                reply.header_value("www-authenticate"),
                Some(r#"Basic realm="ops", charset="UTF-8""#)
            );
            assert_eq!(reply.header_value("content-type"), Some("application/json"));
        }
    }

    #[test]
    fn only_successes_are_cached_and_they_expire() {
        let auth = plugin(serde_json::json!({ "cache_ttl_seconds": 10 }));
        let good = basic("alice", "secret");
        let wrong = basic("alice", "nope");
        assert_eq!(rejected(auth.authenticate(Some(&wrong), 0)).0.status, 401);
        assert_eq!(
            rejected(auth.authenticate(Some(&basic("nobody", "x")), 0))
                .0
                .status,
            401
        );
        assert_eq!(auth.cache.borrow().len(), 0, "failures are never cached");

        assert!(
            continued(auth.authenticate(Some(&good), 1_000))
                .identity
                .is_some()
        );
        assert_eq!(auth.cache.borrow().len(), 1);
        // A wrong password for a cached user is still wrong.
        assert_eq!(
            rejected(auth.authenticate(Some(&wrong), 2_000)).0.status,
            401
        );
        let key = auth.cache.borrow().key(&[b"alice", b"secret"]);
        assert_eq!(auth.cache.borrow_mut().get(&key, 10_999), Some(&0));
        assert_eq!(
            auth.cache.borrow_mut().get(&key, 11_000),
            None,
            "gone after the TTL"
        );
        assert!(
            continued(auth.authenticate(Some(&good), 11_000))
                .identity
                .is_some()
        );
        assert_eq!(
            auth.cache.borrow().len(),
            1,
            "verified again and remembered"
        );
    }

    #[test]
    fn a_cache_hit_answers_without_verifying() {
        let auth = plugin(serde_json::json!({}));
        // Plant an entry that no hash would confirm: only the cache can
        // make this succeed, which shows a hit skips verification.
        let key = auth.cache.borrow().key(&[b"alice", b"cached-only"]);
        auth.cache.borrow_mut().insert(key, 0, 0, None);
        let changes = continued(auth.authenticate(Some(&basic("alice", "cached-only")), 1));
        assert_eq!(changes.identity, Some(alice()));
    }

    #[test]
    fn nothing_is_cached_when_the_cache_is_off() {
        let auth = plugin(serde_json::json!({ "cache_ttl_seconds": 0 }));
        assert!(
            continued(auth.authenticate(Some(&basic("alice", "secret")), 0))
                .identity
                .is_some()
        );
        assert_eq!(auth.cache.borrow().len(), 0);
    }
}
