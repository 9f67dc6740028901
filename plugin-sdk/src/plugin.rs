//! The trait a plugin implements.

use serde::de::DeserializeOwned;

use crate::{Action, Request, Response, ResponseChanges};

/// What an instance needs from the gateway; see [`Policy::needs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// `on_request` is called.
    pub on_request: bool,
    /// `on_response` is called.
    pub on_response: bool,
    /// The request body is buffered for [`Request::body`].
    pub request_body: bool,
    /// The response body is buffered for [`Response::body`].
    pub response_body: bool,
    /// `on_tick` is called.
    pub on_tick: bool,
}

impl Needs {
    /// Everything the impl defines and asks for.
    pub const ALL: Needs = Needs {
        on_request: true,
        on_response: true,
        request_body: true,
        response_body: true,
        on_tick: true,
    };
}

/// A policy plugin: its configuration, its constructor, and the hooks it
/// implements. Put [`#[policy]`](crate::policy) on the impl to export it.
///
/// # Phases
///
/// ```text
///            gateway: init(config JSON) ─► Config ─► Policy::new ─► instance
///                                                                     │
/// client ─► request phase ─────────────► upstream ─► response phase ─► client
///           on_request(&Request)                     on_response(&Request, &Response)
///             ├─ Action::Continue(changes)             └─ ResponseChanges
///             └─ Action::Respond(reply) ──► (no upstream) ─► response phase
///
///            gateway, every tick interval, between requests: on_tick(route)
/// ```
///
/// The gateway calls [`new`](Self::new) once per instance, with the route's
/// `config` table; an error refuses the configuration before it serves. Each
/// instance then serves many hook calls of that route, one at a time, so
/// `self` may hold data derived from the config (hash tables, compiled
/// patterns) and caches. The `on_request` and `on_response` of one request
/// may run on different instances: what the second needs from the first
/// travels with the request
/// ([`RequestChanges::carry`](crate::RequestChanges::carry),
/// [`Request::carried`](crate::Request::carried)). State that every
/// instance must agree on (counters, windows) belongs in the
/// [`store`](crate::store).
///
/// Hooks default to "go on unchanged", and a hook the impl does not define
/// is never called: a plugin implements only what it needs.
///
/// # The `#[policy]` attribute
///
/// It exports the impl as the plugin's entry points. It goes on an
/// `impl Policy for YourType` block (the trait may be named by a path such
/// as `portcullis_sdk::Policy`, but not renamed), once per plugin:
///
/// ```compile_fail
/// use portcullis_sdk::policy;
///
/// struct NotAnImpl;
///
/// #[policy] // error: #[policy] must be placed on `impl Policy for YourType { ... }`
/// impl NotAnImpl {}
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// use portcullis_sdk::{Policy, policy};
///
/// struct Generic<T>(T);
///
/// #[policy] // error: a plugin is one concrete type
/// impl<T: 'static> Policy for Generic<T> {
///     type Config = ();
///     fn new(_: ()) -> Result<Self, String> { Err("no".into()) }
/// }
/// # fn main() {}
/// ```
pub trait Policy: Sized + 'static {
    /// The plugin's configuration, deserialized from the route's `config`
    /// table. Errors name the key path (`keys[0].sha256: invalid type:
    /// integer, expected a string`). A route without a `config` table
    /// passes `{}`: use a struct whose fields all have defaults, or `()`.
    type Config: DeserializeOwned;

    /// Whether the gateway buffers the request body (up to its
    /// `limits.max_body_bytes`) for [`Request::body`] before `on_request`.
    /// Costs memory and latency on every request: leave it `false` unless
    /// the plugin reads the body.
    const REQUEST_BODY: bool = false;

    /// Whether the gateway buffers the response body for
    /// [`Response::body`] before `on_response`.
    const RESPONSE_BODY: bool = false;

    /// Which hooks the impl defines; set by `#[policy]`.
    #[doc(hidden)]
    const __HOOKS: u8 = 0;

    /// Makes an instance from a validated configuration, or says what is
    /// wrong with it; the message is shown to the operator with the route
    /// and plugin names, so name the key concerned.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// What this instance needs, given its configuration. The gateway asks
    /// once, after [`new`](Self::new): a plugin whose configuration leaves a
    /// hook or a body unused says so here, and its routes skip the cost
    /// (buffering bodies, a hook call per request).
    /// It can only turn off what the impl defines and the `*_BODY`
    /// constants ask for. The default, [`Needs::ALL`], turns off nothing.
    ///
    /// ```
    /// # use portcullis_sdk::{Needs, Policy, policy};
    /// struct Rewrite { body_rules: usize }
    /// # #[policy]
    /// impl Policy for Rewrite {
    ///     type Config = ();
    ///     const REQUEST_BODY: bool = true;
    /// #   fn new(_: ()) -> Result<Self, String> { Ok(Rewrite { body_rules: 0 }) }
    ///     fn needs(&self) -> Needs {
    ///         Needs { request_body: self.body_rules > 0, ..Needs::ALL }
    ///     }
    /// }
    /// # fn main() {}
    /// ```
    fn needs(&self) -> Needs {
        Needs::ALL
    }

    /// Decides what happens to a request before it goes upstream.
    fn on_request(&self, req: &Request) -> Action {
        let _ = req;
        Action::next()
    }

    /// Changes the response before it goes to the client. Called for the
    /// upstream's response, and also for a reply made by a later plugin's
    /// [`Action::Respond`].
    fn on_response(&self, req: &Request, resp: &Response) -> ResponseChanges {
        let _ = (req, resp);
        ResponseChanges::none()
    }

    /// Called periodically (every `plugins.tick_interval_ms` of the
    /// gateway, 1 s by default) on one instance of each route the plugin is
    /// configured on, between requests; `route` is the route's name. For
    /// work that must happen without traffic: resolving an incident that
    /// cleared, refreshing derived state. Keep it short: it runs under the
    /// same CPU deadline as the other hooks.
    fn on_tick(&self, route: &str) {
        let _ = route;
    }
}
