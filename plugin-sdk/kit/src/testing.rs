//! Helpers for the plugins' unit tests on the host (feature `testing`,
//! taken in `[dev-dependencies]`): a configuration from JSON through the
//! plugin's own validation, and the decision a hook returned.
//!
//! ```
//! use portcullis_plugin_kit::testing;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     limit: u32,
//! }
//!
//! impl Config {
//!     fn build(self) -> Result<u32, String> {
//!         if self.limit == 0 {
//!             return Err("limit: must be at least 1".into());
//!         }
//!         Ok(self.limit)
//!     }
//! }
//!
//! assert_eq!(testing::valid(r#"{"limit":3}"#, Config::build), 3);
//! assert_eq!(
//!     testing::problems(r#"{"limit":0}"#, Config::build),
//!     "limit: must be at least 1"
//! );
//! // What serde refuses is a problem too, as it is in the gateway.
//! assert!(testing::problems(r#"{"limits":3}"#, Config::build).contains("unknown field `limits`"));
//! ```

use portcullis_sdk::{Action, Reply, RequestChanges};
use serde::de::DeserializeOwned;

/// A configuration written as JSON text or as a `serde_json::Value`.
pub trait ConfigJson {
    /// The configuration deserialized as `C`.
    fn deserialize<C: DeserializeOwned>(self) -> Result<C, serde_json::Error>;
}

impl ConfigJson for &str {
    fn deserialize<C: DeserializeOwned>(self) -> Result<C, serde_json::Error> {
        serde_json::from_str(self)
    }
}

impl ConfigJson for &String {
    fn deserialize<C: DeserializeOwned>(self) -> Result<C, serde_json::Error> {
        serde_json::from_str(self)
    }
}

impl ConfigJson for serde_json::Value {
    fn deserialize<C: DeserializeOwned>(self) -> Result<C, serde_json::Error> {
        serde_json::from_value(self)
    }
}

impl ConfigJson for &serde_json::Value {
    fn deserialize<C: DeserializeOwned>(self) -> Result<C, serde_json::Error> {
        C::deserialize(self)
    }
}

/// The configuration `json` deserialized as `C` and built by `build` (the
/// plugin's `Config::build`): what the plugin makes of it, or every
/// problem, a deserialization error included.
pub fn build<C: DeserializeOwned, T>(
    json: impl ConfigJson,
    build: impl FnOnce(C) -> Result<T, String>,
) -> Result<T, String> {
    build(json.deserialize::<C>().map_err(|e| e.to_string())?)
}

/// What `build` makes of the valid configuration `json`.
///
/// # Panics
/// If the configuration is refused, showing the problems.
#[track_caller]
pub fn valid<C: DeserializeOwned, T>(
    json: impl ConfigJson,
    build: impl FnOnce(C) -> Result<T, String>,
) -> T {
    match self::build(json, build) {
        Ok(built) => built,
        Err(problems) => panic!("the config must be valid, got: {problems}"),
    }
}

/// The problems `build` reports for the bad configuration `json`.
///
/// # Panics
/// If the configuration is accepted.
#[track_caller]
pub fn problems<C: DeserializeOwned, T>(
    json: impl ConfigJson,
    build: impl FnOnce(C) -> Result<T, String>,
) -> String {
    match self::build(json, build) {
        Ok(_) => panic!("the config must be rejected"),
        Err(problems) => problems,
    }
}

/// Asserts that each configuration of `cases` is refused with problems
/// that contain the text given with it.
///
/// # Panics
/// On the first configuration accepted, or refused for something else.
#[track_caller]
pub fn assert_problems<'a, J, C, T>(
    cases: impl IntoIterator<Item = (J, &'a str)>,
    build: impl Fn(C) -> Result<T, String>,
) where
    J: ConfigJson + Clone + std::fmt::Debug,
    C: DeserializeOwned,
{
    for (json, expected) in cases {
        let problems = problems(json.clone(), &build);
        assert!(
            problems.contains(expected),
            "{json:?}: expected `{expected}` in `{problems}`"
        );
    }
}

/// Defines, in a plugin's config test module, `build(json)` and
/// `problems(json)` for its `Config::build` (see [`build`] and
/// [`problems`]; `json` is anything [`ConfigJson`]).
///
/// ```ignore
/// #[cfg(test)]
/// mod tests {
///     use super::*;
///
///     portcullis_plugin_kit::config_test_helpers!(Config => Settings);
///
///     #[test]
///     fn a_zero_limit_is_refused() {
///         assert_eq!(problems(r#"{"limit":0}"#), "limit: must be at least 1");
///     }
/// }
/// ```
#[macro_export]
macro_rules! config_test_helpers {
    ($config:ty => $built:ty) => {
        /// What `Config::build` makes of the config `json`.
        #[allow(dead_code)]
        fn build(json: impl $crate::testing::ConfigJson) -> Result<$built, String> {
            $crate::testing::build(json, <$config>::build)
        }

        /// The problems of the bad config `json`.
        #[allow(dead_code)]
        fn problems(json: impl $crate::testing::ConfigJson) -> String {
            $crate::testing::problems(json, <$config>::build)
        }
    };
}

/// The changes of an action that lets the request go on.
///
/// # Panics
/// If the action is a reply, showing its status and body.
#[track_caller]
pub fn continued(action: Action) -> RequestChanges {
    match action {
        Action::Continue(changes) => changes,
        Action::Respond(reply) => panic!(
            "expected to go on, got {} {} {:?}",
            reply.status,
            String::from_utf8_lossy(&reply.body),
            reply.headers
        ),
    }
}

/// The reply of an action that answers the request.
///
/// # Panics
/// If the action lets the request go on.
#[track_caller]
pub fn replied(action: Action) -> Reply {
    match action {
        Action::Respond(reply) => reply,
        Action::Continue(changes) => panic!("expected a reply, got {changes:?}"),
    }
}

/// The body of `reply` as JSON.
///
/// # Panics
/// If it is not JSON.
#[track_caller]
pub fn json_body(reply: &Reply) -> serde_json::Value {
    match serde_json::from_slice(&reply.body) {
        Ok(body) => body,
        Err(e) => panic!(
            "the body is not JSON ({e}): {}",
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_taken_apart() {
        let changes = RequestChanges::new().set_header("x", "1");
        assert_eq!(continued(changes.clone().into()), changes);
        let reply = Reply::message(401, "no");
        assert_eq!(replied(reply.clone().into()), reply);
        assert_eq!(json_body(&reply), serde_json::json!({ "message": "no" }));
    }

    #[test]
    #[should_panic(expected = "expected to go on, got 401")]
    fn a_reply_is_not_a_continuation() {
        let _ = continued(Reply::message(401, "no").into());
    }
}
