//! The glue between the generated bindings and the public API. Used by the
//! code `#[policy]` emits; not part of the public API.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::{Needs, Policy, Reply, Request, Response, ResponseChanges};

/// Bindings generated from `wit/policy.wit`.
// wit-bindgen's output is the canonical ABI glue: raw pointers, `unsafe`
// blocks and `#[unsafe(export_name)]`. It is the only unsafe code of the SDK.
#[allow(unsafe_code, unreachable_pub, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "portcullis:policy/policy",
        pub_export_macro: true,
        default_bindings_module: "::portcullis_sdk::__private::bindings",
    });
}

pub use bindings::export;

use bindings::portcullis::policy::types as wit;

/// The custom section in which `#[policy]` stamps the plugin crate's name
/// and version (`name=<crate>\nversion=<semver>\n`), which the gateway
/// shows next to the module's SHA-256 and signatures cover.
pub const STAMP_SECTION: &str = "portcullis-plugin";

/// `text` as the fixed-size array a `#[link_section]` static needs.
pub const fn stamp_bytes<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N && i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Emits the stamp of the crate it is expanded in (`#[policy]` does).
#[doc(hidden)]
#[macro_export]
macro_rules! __stamp {
    () => {
        const __PORTCULLIS_STAMP_TEXT: &str = concat!(
            "name=",
            env!("CARGO_PKG_NAME"),
            "\nversion=",
            env!("CARGO_PKG_VERSION"),
            "\n"
        );
        // A custom section of the module: data, never code or memory.
        #[allow(unsafe_code)]
        #[used]
        #[unsafe(link_section = "portcullis-plugin")]
        static __PORTCULLIS_STAMP: [u8; __PORTCULLIS_STAMP_TEXT.len()] =
            $crate::__private::stamp_bytes(__PORTCULLIS_STAMP_TEXT);
    };
}

pub use crate::__stamp as stamp;

/// `Policy::__HOOKS` bit: the impl defines `on_request`.
pub const HOOK_ON_REQUEST: u8 = 1 << 0;
/// `Policy::__HOOKS` bit: the impl defines `on_response`.
pub const HOOK_ON_RESPONSE: u8 = 1 << 1;
/// `Policy::__HOOKS` bit: the impl defines `on_tick`.
pub const HOOK_ON_TICK: u8 = 1 << 2;

thread_local! {
    // The plugin instance made by `init`. A component instance runs one call
    // at a time on one thread, so this is the instance's only state.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Implements the generated `Guest` trait for a [`Policy`]; `#[policy]`
/// exports `Adapter<YourType>`.
pub struct Adapter<T>(PhantomData<T>);

impl<T: Policy> bindings::Guest for Adapter<T> {
    fn init(config: String) -> Result<bindings::PluginInfo, String> {
        let config = parse_config::<T::Config>(&config)?;
        let policy = T::new(config)?;
        let hooks = hooks::<T>(policy.needs());
        INSTANCE.with_borrow_mut(|slot| *slot = Some(Box::new(policy)));
        Ok(bindings::PluginInfo { hooks })
    }

    fn on_request(req: &bindings::Request) -> bindings::RequestAction {
        let req = Request::from_wit(req);
        with_instance::<T, _>(|policy| policy.on_request(req))
            .unwrap_or_else(|| Reply::json(500, &NOT_INITIALISED).into())
            .into_wit()
    }

    fn on_response(
        req: &bindings::Request,
        resp: &bindings::Response,
    ) -> bindings::ResponseChanges {
        let (req, resp) = (Request::from_wit(req), Response::from_wit(resp));
        with_instance::<T, _>(|policy| policy.on_response(req, resp))
            .unwrap_or_else(|| ResponseChanges::none().status(500))
            .into_wit()
    }

    fn on_tick(route: String) {
        with_instance::<T, _>(|policy| policy.on_tick(&route));
    }
}

/// The body of the 500 reply to a hook called before `init` (which the
/// gateway never does).
const NOT_INITIALISED: Message = Message {
    message: "plugin not initialised",
};

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

/// Calls `f` with the instance `init` made, if there is one.
fn with_instance<T: Policy, R>(f: impl FnOnce(&T) -> R) -> Option<R> {
    INSTANCE.with_borrow(|slot| {
        slot.as_ref()
            .and_then(|policy| policy.downcast_ref::<T>())
            .map(f)
    })
}

/// The hooks `init` reports for an instance of `T` that needs `needs`.
fn hooks<T: Policy>(needs: Needs) -> wit::Hooks {
    [
        (
            T::__HOOKS & HOOK_ON_REQUEST != 0 && needs.on_request,
            wit::Hooks::ON_REQUEST,
        ),
        (
            T::__HOOKS & HOOK_ON_RESPONSE != 0 && needs.on_response,
            wit::Hooks::ON_RESPONSE,
        ),
        (
            T::REQUEST_BODY && needs.request_body,
            wit::Hooks::REQUEST_BODY,
        ),
        (
            T::RESPONSE_BODY && needs.response_body,
            wit::Hooks::RESPONSE_BODY,
        ),
        (
            T::__HOOKS & HOOK_ON_TICK != 0 && needs.on_tick,
            wit::Hooks::TICK,
        ),
    ]
    .into_iter()
    .filter(|(wanted, _)| *wanted)
    .fold(wit::Hooks::empty(), |hooks, (_, flag)| hooks | flag)
}

/// Deserializes a plugin's configuration from the JSON the gateway passes to
/// `init`, with errors that name the key path (`keys[0].sha256: ...`).
///
/// An empty configuration (`""` or `{}`) is first read as `{}`, so that a
/// struct whose fields all have defaults works; if that fails it is read as
/// `null`, so that `()` and `Option<_>` work; if both fail, the error of the
/// first attempt is reported.
pub(crate) fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, String> {
    let trimmed = json.trim();
    let empty = trimmed.is_empty()
        || trimmed
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .is_some_and(|inner| inner.trim().is_empty());
    if empty {
        return deserialize("{}").or_else(|error| deserialize("null").map_err(|_| error));
    }
    deserialize(json)
}

fn deserialize<C: DeserializeOwned>(json: &str) -> Result<C, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = describe(e.inner());
        let path = e.path();
        if path.iter().next().is_none() {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })?;
    de.end().map_err(|e| describe(&e))?;
    Ok(value)
}

/// A serde_json error without its position: the JSON is the gateway's
/// rendering of the TOML the user wrote, so its lines and columns would
/// only mislead.
fn describe(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Defaults {
        #[serde(default)]
        name: String,
        #[serde(default = "three")]
        count: u32,
    }

    fn three() -> u32 {
        3
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Keys {
        keys: Vec<Key>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Key {
        sha256: String,
    }

    #[test]
    fn empty_configs_use_the_defaults() {
        let expected = Defaults {
            name: String::new(),
            count: 3,
        };
        for json in ["", "  ", "{}", " { } "] {
            assert_eq!(
                parse_config::<Defaults>(json),
                Ok(expected.clone()),
                "{json:?}"
            );
        }
        assert_eq!(parse_config::<()>("{}"), Ok(()));
        assert_eq!(parse_config::<()>(""), Ok(()));
        assert_eq!(parse_config::<Option<Defaults>>(""), Ok(Some(expected)));
    }

    #[test]
    fn errors_name_the_key_path_without_a_json_position() {
        let err = parse_config::<Keys>(r#"{"keys":[{"sha256":5}]}"#).expect_err("integer");
        assert_eq!(
            err,
            "keys[0].sha256: invalid type: integer `5`, expected a string"
        );
        let err = parse_config::<Keys>("{}").expect_err("missing");
        assert_eq!(err, "missing field `keys`");
        let err = parse_config::<Defaults>(r#"{"nmae":"x"}"#).expect_err("unknown");
        assert_eq!(
            err,
            "nmae: unknown field `nmae`, expected `name` or `count`"
        );
        let err = parse_config::<Defaults>(r#"{"count":1} x"#).expect_err("trailing");
        assert_eq!(err, "trailing characters");
    }

    /// Defines both hooks and reads request bodies.
    struct Both;

    impl Policy for Both {
        type Config = ();
        const REQUEST_BODY: bool = true;
        const __HOOKS: u8 = HOOK_ON_REQUEST | HOOK_ON_RESPONSE;
        fn new(_: ()) -> Result<Self, String> {
            Ok(Both)
        }
    }

    #[test]
    fn needs_only_turn_off_what_the_impl_defines() {
        let all = wit::Hooks::ON_REQUEST | wit::Hooks::ON_RESPONSE | wit::Hooks::REQUEST_BODY;
        assert_eq!(hooks::<Both>(Needs::ALL), all);
        let fewer = Needs {
            on_response: false,
            request_body: false,
            ..Needs::ALL
        };
        assert_eq!(hooks::<Both>(fewer), wit::Hooks::ON_REQUEST);
        // An impl without `on_tick` never reports `tick`.
        assert_eq!(
            hooks::<Both>(Needs::ALL) & wit::Hooks::TICK,
            wit::Hooks::empty()
        );
        // Asking for a response body the impl never asked for changes nothing.
        assert_eq!(
            hooks::<Both>(Needs::ALL) & wit::Hooks::RESPONSE_BODY,
            wit::Hooks::empty()
        );
    }

    /// Defines only `on_tick`.
    struct Ticking;

    impl Policy for Ticking {
        type Config = ();
        const __HOOKS: u8 = HOOK_ON_TICK;
        fn new(_: ()) -> Result<Self, String> {
            Ok(Ticking)
        }
    }

    #[test]
    fn tick_is_reported_when_defined_and_needed() {
        assert_eq!(hooks::<Ticking>(Needs::ALL), wit::Hooks::TICK);
        let idle = Needs {
            on_tick: false,
            ..Needs::ALL
        };
        assert_eq!(hooks::<Ticking>(idle), wit::Hooks::empty());
    }

    #[test]
    fn a_config_for_a_plugin_without_one_is_rejected() {
        let err = parse_config::<()>(r#"{"x":1}"#).expect_err("not unit");
        assert!(err.contains("expected unit"), "{err}");
    }
}
