//! `key_auth`: a Portcullis policy plugin that authenticates requests by API
//! key, taken from a header and/or a query parameter and checked against
//! SHA-256 hashes from its configuration. See the README for the
//! configuration.
//!
//! A request with no key, or a key that matches no hash, is answered with
//! 401 and a `WWW-Authenticate: ApiKey realm="..."` challenge. A request
//! with a good key goes on with the consumer's identity (name, roles,
//! tenant), the attribute `consumer`, the identity in the configured
//! `identity_headers`, and by default without the key.
//!
//! Keys are compared by looking up the SHA-256 of the presented key in a
//! table built once at `init`, so the configuration never holds usable
//! keys and a lookup costs one hash whatever the number of keys.

use std::collections::HashMap;

use portcullis_plugin_kit::identity::IdentityHeaders;
use portcullis_sdk::{Action, Identity, Policy, Reply, Request, RequestChanges, policy};
use sha2::Sha256;

mod config;
mod query;

use config::Config;

/// A SHA-256 digest.
type Digest = [u8; 32];

/// The SHA-256 of a key.
fn digest(key: &str) -> Digest {
    use sha2::Digest as _;
    Sha256::digest(key.as_bytes()).into()
}

/// One route's `key_auth`, built from a validated [`Config`].
struct KeyAuth {
    /// The header carrying the key (lowercase), if header lookup is on.
    header: Option<String>,
    /// The query parameter carrying the key, if any.
    query_param: Option<String>,
    /// Whether to strip the key before the upstream.
    hide_credentials: bool,
    /// The `WWW-Authenticate` value of a 401.
    challenge: String,
    /// The identity each accepted key stands for, by the key's SHA-256.
    consumers: HashMap<Digest, Identity>,
    /// Headers that carry the identity to the upstream.
    identity_headers: IdentityHeaders,
}

#[policy]
impl Policy for KeyAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(config.build()?.log_warnings(portcullis_sdk::log::warn))
    }

    fn on_request(&self, req: &Request) -> Action {
        let header = self.header.as_deref().and_then(|name| req.header(name));
        let query = self.query_param.as_ref().and_then(|_| req.query());
        self.authenticate(header.as_deref(), query.as_deref())
    }
}

impl KeyAuth {
    /// The decision for a request whose key header has the value `header`
    /// (if present) and whose raw query is `query` (if any). The header is
    /// tried first; an empty value counts as no key.
    fn authenticate(&self, header: Option<&str>, query: Option<&str>) -> Action {
        let (from_query, rest_of_query) = match (&self.query_param, query) {
            (Some(name), Some(query)) => query::take_param(query, name),
            _ => (None, None),
        };
        let presented = header
            .filter(|key| !key.is_empty())
            .or(from_query.as_deref().filter(|key| !key.is_empty()));
        let Some(key) = presented else {
            return self.reject("no API key found in request");
        };
        let Some(identity) = self.consumers.get(&digest(key)) else {
            return self.reject("invalid API key");
        };

        let mut changes = RequestChanges::new().authenticated(identity.clone());
        if self.hide_credentials {
            if let (Some(name), Some(_)) = (&self.header, header) {
                changes = changes.remove_header(name.as_str());
            }
            if let Some(rest) = rest_of_query {
                changes = changes.query(rest);
            }
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

    fn plugin(extra: &str) -> KeyAuth {
        let json = format!(
            r#"{{{extra}"keys":[
                {{"consumer":"alice","sha256":"{}","roles":["admin"],"tenant":"acme"}},
                {{"consumer":"bob","key":"bob-secret"}}
            ]}}"#,
            hex::encode(digest("alice-secret"))
        );
        testing::valid(&json, Config::build).plugin
    }

    fn alice() -> Identity {
        Identity::new("alice").roles(["admin"]).tenant("acme")
    }

    fn rejected(action: Action) -> (Reply, serde_json::Value) {
        let reply = replied(action);
        let body = json_body(&reply);
        (reply, body)
    }

    #[test]
    fn a_good_header_key_attaches_the_identity_and_is_stripped() {
        let changes = continued(plugin("").authenticate(Some("alice-secret"), None));
        assert_eq!(changes.identity, Some(alice()));
        assert_eq!(
            changes.attributes,
            [("consumer".to_owned(), "alice".to_owned())]
        );
        assert_eq!(changes.remove_headers, ["x-api-key"]);
        assert_eq!(changes.query, None);

        let bob = continued(plugin("").authenticate(Some("bob-secret"), Some("a=1")));
        assert_eq!(bob.identity, Some(Identity::new("bob")));
        assert_eq!(
            bob.query, None,
            "the query is left alone without a query_param"
        );
    }

    #[test]
    fn the_identity_goes_upstream_in_the_configured_headers() {
        let auth = plugin(
            r#""identity_headers":{"consumer":"x-consumer","roles":"x-roles","tenant":"x-tenant"},"#,
        );
        let changes = continued(auth.authenticate(Some("alice-secret"), None));
        assert_eq!(
            changes.remove_headers,
            ["x-api-key", "x-consumer", "x-roles", "x-tenant"],
            "whatever the client sent under those names goes first"
        );
        assert_eq!(
            changes.set_headers,
            [
                ("x-consumer".to_owned(), "alice".to_owned()),
                ("x-roles".to_owned(), "admin".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned()),
            ]
        );
        let bob = continued(auth.authenticate(Some("bob-secret"), None));
        assert_eq!(
            bob.set_headers,
            [("x-consumer".to_owned(), "bob".to_owned())],
            "no roles, no tenant: those headers are only removed"
        );
    }

    #[test]
    fn a_good_query_key_is_removed_from_the_query() {
        let auth = plugin(r#""query_param":"apikey","#);
        let changes = continued(auth.authenticate(None, Some("apikey=bob-secret&page=2")));
        assert_eq!(changes.identity, Some(Identity::new("bob")));
        assert_eq!(changes.query.as_deref(), Some("page=2"));
        assert!(changes.remove_headers.is_empty(), "no header was sent");

        let only = continued(auth.authenticate(None, Some("apikey=bob%2Dsecret")));
        assert_eq!(
            only.query.as_deref(),
            Some(""),
            "an emptied query is removed"
        );
    }

    #[test]
    fn the_header_is_tried_first_and_both_are_stripped() {
        let auth = plugin(r#""query_param":"apikey","#);
        let changes = continued(auth.authenticate(Some("alice-secret"), Some("apikey=wrong&x=1")));
        assert_eq!(changes.identity, Some(alice()));
        assert_eq!(changes.remove_headers, ["x-api-key"]);
        assert_eq!(changes.query.as_deref(), Some("x=1"));

        let (reply, _) = rejected(auth.authenticate(Some("wrong"), Some("apikey=alice-secret")));
        assert_eq!(
            reply.status, 401,
            "a bad header key is not rescued by the query"
        );

        let changes = continued(auth.authenticate(Some(""), Some("apikey=alice-secret")));
        assert_eq!(
            changes.identity,
            Some(alice()),
            "an empty header counts as none"
        );
    }

    #[test]
    fn credentials_stay_when_hide_credentials_is_off() {
        let auth = plugin(r#""query_param":"apikey","hide_credentials":false,"#);
        let changes = continued(auth.authenticate(Some("alice-secret"), Some("apikey=x")));
        assert!(changes.remove_headers.is_empty());
        assert_eq!(changes.query, None);
        assert_eq!(changes.identity, Some(alice()));
    }

    #[test]
    fn a_missing_key_is_a_401_with_a_challenge() {
        let auth = plugin(r#""realm":"the \"zoo\"","#);
        for (header, query) in [
            (None, None),
            (Some(""), None),
            (None, Some("apikey=alice-secret")),
        ] {
            let (reply, body) = rejected(auth.authenticate(header, query));
            assert_eq!(reply.status, 401);
            assert_eq!(
                body,
                serde_json::json!({ "message": "no API key found in request" })
            );
            assert_eq!(
                reply.header_value("www-authenticate"),
                Some(r#"ApiKey realm="the \"zoo\"""#)
            );
            assert_eq!(reply.header_value("content-type"), Some("application/json"));
        }
    }

    #[test]
    fn a_wrong_key_is_a_401_with_a_challenge() {
        let auth = plugin(r#""query_param":"apikey","#);
        for (header, query) in [
            (Some("alice-secre"), None),
            (Some("ALICE-SECRET"), None),
            (None, Some("apikey=guess")),
            (Some(" alice-secret"), None),
        ] {
            let (reply, body) = rejected(auth.authenticate(header, query));
            assert_eq!(reply.status, 401);
            assert_eq!(body, serde_json::json!({ "message": "invalid API key" }));
            assert_eq!(
                reply.header_value("www-authenticate"),
                Some(r#"ApiKey realm="portcullis""#)
            );
        }
    }

    #[test]
    fn header_lookup_can_be_turned_off() {
        let auth = plugin(r#""header":"","query_param":"apikey","#);
        let (reply, _) = rejected(auth.authenticate(None, None));
        assert_eq!(reply.status, 401);
        let changes = continued(auth.authenticate(None, Some("apikey=alice-secret")));
        assert!(changes.remove_headers.is_empty());
    }
}
