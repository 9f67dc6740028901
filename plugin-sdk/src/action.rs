//! What hooks return: go on (with changes) or answer, and response changes.

use serde::Serialize;

use crate::__private::bindings::portcullis::policy::types as wit;
use crate::Identity;

/// The header builder methods shared by [`RequestChanges`] and
/// [`ResponseChanges`], which both have `set_headers`, `add_headers` and
/// `remove_headers` lists.
macro_rules! header_edits {
    () => {
        /// Sets a header, replacing every existing value.
        pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.set_headers.push((name.into(), value.into()));
            self
        }

        /// Adds a header value beside the existing ones.
        pub fn add_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.add_headers.push((name.into(), value.into()));
            self
        }

        /// Removes every value of a header.
        pub fn remove_header(mut self, name: impl Into<String>) -> Self {
            self.remove_headers.push(name.into());
            self
        }
    };
}

/// What [`Policy::on_request`](crate::Policy::on_request) decides.
///
/// ```
/// use portcullis_sdk::{Action, Reply, RequestChanges};
///
/// // Go on unchanged.
/// let next = Action::next();
/// // Go on with a header added for the upstream.
/// let tagged: Action = RequestChanges::new().set_header("x-checked", "yes").into();
/// // Answer the client instead of the upstream.
/// let refused: Action = Reply::new(403).body("forbidden").into();
/// # let _ = (next, tagged, refused);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per request and moved once; boxing would cost an allocation and clumsier matching"
)]
pub enum Action {
    /// Go on to the next plugin, and then the upstream, with these changes.
    Continue(RequestChanges),
    /// Stop here and answer the client with this reply. The plugins that
    /// already ran still see it in their `on_response`.
    Respond(Reply),
}

impl Action {
    /// Go on with no changes.
    pub fn next() -> Self {
        Action::Continue(RequestChanges::new())
    }

    pub(crate) fn into_wit(self) -> wit::RequestAction {
        match self {
            Action::Continue(changes) => wit::RequestAction::Continue(changes.into_wit()),
            Action::Respond(reply) => wit::RequestAction::Respond(reply.into_wit()),
        }
    }
}

impl From<RequestChanges> for Action {
    fn from(changes: RequestChanges) -> Self {
        Action::Continue(changes)
    }
}

impl From<Reply> for Action {
    fn from(reply: Reply) -> Self {
        Action::Respond(reply)
    }
}

/// Changes to a request that goes on, built with the methods below. The
/// gateway applies header changes in the order: remove, set, add. Header
/// names are matched case-insensitively.
///
/// ```
/// use portcullis_sdk::{Identity, RequestChanges};
///
/// let changes = RequestChanges::new()
///     .remove_header("x-api-key")
///     .set_header("x-consumer", "alice")
///     .add_header("via", "portcullis")
///     .path("/v2/users")
///     .query("")
///     .attribute("consumer", "alice")
///     .identity(Identity::new("alice"));
/// assert_eq!(changes.remove_headers, ["x-api-key"]);
/// assert_eq!(changes.query.as_deref(), Some(""));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct RequestChanges {
    /// Headers to remove (every value).
    pub remove_headers: Vec<String>,
    /// Headers to set, replacing every existing value.
    pub set_headers: Vec<(String, String)>,
    /// Headers to add beside existing values.
    pub add_headers: Vec<(String, String)>,
    /// A new method.
    pub method: Option<String>,
    /// A new path; must start with `/`.
    pub path: Option<String>,
    /// A new query string without the `?`; an empty string removes it.
    pub query: Option<String>,
    /// Attributes for later plugins (the access log does not show them).
    pub attributes: Vec<(String, String)>,
    /// The caller's identity, replacing any earlier one.
    pub identity: Option<Identity>,
    /// A new request body, replacing the client's whether the plugin read
    /// it ([`Policy::REQUEST_BODY`](crate::Policy::REQUEST_BODY)) or not;
    /// the gateway sets `content-length` to match.
    pub body: Option<Vec<u8>>,
}

impl RequestChanges {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    header_edits!();

    /// Replaces the method.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Replaces the path, which must start with `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Replaces the raw query string (without the `?`); `""` removes it.
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Sets an attribute for later plugins (not logged); an attribute
    /// set again replaces the earlier value.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }

    /// Carries `value` to this request's later hooks, the plugin's own
    /// `on_response` included, as the attribute `key` holding its JSON:
    /// read it back with [`Request::carried`](crate::Request::carried).
    ///
    /// The request and response hooks of one request may run on different
    /// instances, so what `on_response` needs from `on_request` travels
    /// with the request, not in instance memory. Attributes are shared by
    /// every plugin of the route: use the plugin's name as `key`. A value
    /// that cannot be serialized carries nothing.
    ///
    /// ```
    /// use portcullis_sdk::RequestChanges;
    /// use serde::Serialize;
    ///
    /// #[derive(Serialize)]
    /// struct Seen { remaining: u64 }
    ///
    /// let changes = RequestChanges::new().carry("my_plugin", &Seen { remaining: 4 });
    /// assert_eq!(changes.attributes, [("my_plugin".to_owned(), r#"{"remaining":4}"#.to_owned())]);
    /// ```
    pub fn carry<T: Serialize>(self, key: impl Into<String>, value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(json) => self.attribute(key, json),
            Err(_) => self,
        }
    }

    /// Attaches the caller's identity, replacing any earlier one.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// What an authentication plugin returns for a caller it accepted:
    /// attaches `identity` (replacing any earlier one) and sets the
    /// attribute `consumer` to its consumer name, for later plugins.
    ///
    /// ```
    /// use portcullis_sdk::{Identity, RequestChanges};
    ///
    /// let changes = RequestChanges::new().authenticated(Identity::new("alice").roles(["admin"]));
    /// assert_eq!(changes.attributes, [("consumer".to_owned(), "alice".to_owned())]);
    /// assert_eq!(changes.identity, Some(Identity::new("alice").roles(["admin"])));
    /// ```
    pub fn authenticated(self, identity: Identity) -> Self {
        self.attribute("consumer", identity.consumer.as_str())
            .identity(identity)
    }

    /// Replaces the body (see [`body`](Self#structfield.body)).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn into_wit(self) -> wit::RequestChanges {
        wit::RequestChanges {
            remove_headers: self.remove_headers,
            set_headers: self.set_headers,
            add_headers: self.add_headers,
            method: self.method,
            path: self.path,
            query: self.query,
            attributes: self.attributes,
            identity: self.identity.map(Identity::into_wit),
            body: self.body,
        }
    }
}

/// A response the plugin sends instead of forwarding the request.
///
/// ```
/// use portcullis_sdk::Reply;
///
/// let teapot = Reply::new(418).header("content-type", "text/plain").body("short and stout");
/// let denied = Reply::json(403, &serde_json::json!({ "message": "forbidden" }));
/// assert_eq!(denied.headers, [("content-type".to_owned(), "application/json".to_owned())]);
/// assert_eq!(denied.body, br#"{"message":"forbidden"}"#);
/// # let _ = teapot;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct Reply {
    /// The status code, e.g. 401, 403, 429.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A reply with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A reply with this status and `value` as its JSON body, with
    /// `content-type: application/json`.
    ///
    /// If `value` cannot be serialized (a map with keys that are not
    /// strings, or a `Serialize` impl that fails), the reply is a 500 with
    /// a JSON body saying so instead.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        let (status, body) = match serde_json::to_vec(value) {
            Ok(body) => (status, body),
            Err(_) => (
                500,
                br#"{"message":"plugin reply could not be serialized"}"#.to_vec(),
            ),
        };
        Reply::new(status)
            .header("content-type", "application/json")
            .body(body)
    }

    /// A reply with this status and the JSON body `{"message": message}`,
    /// with `content-type: application/json`: the usual shape of a plugin's
    /// refusal.
    ///
    /// ```
    /// use portcullis_sdk::Reply;
    ///
    /// let reply = Reply::message(403, "forbidden");
    /// assert_eq!(reply.status, 403);
    /// assert_eq!(reply.body, br#"{"message":"forbidden"}"#);
    /// assert_eq!(reply.header_value("Content-Type"), Some("application/json"));
    /// ```
    pub fn message(status: u16, message: &str) -> Self {
        /// The JSON body of [`Reply::message`].
        #[derive(Serialize)]
        struct Message<'a> {
            message: &'a str,
        }
        Reply::json(status, &Message { message })
    }

    /// `401 Unauthorized` with the `WWW-Authenticate` challenge (RFC 9110
    /// §11.6.1 requires one on every 401) and the JSON body
    /// `{"message": message}`: what an authentication plugin answers.
    ///
    /// ```
    /// use portcullis_sdk::Reply;
    ///
    /// let reply = Reply::unauthorized(r#"Basic realm="api""#, "invalid user name or password");
    /// assert_eq!(reply.status, 401);
    /// assert_eq!(reply.header_value("www-authenticate"), Some(r#"Basic realm="api""#));
    /// assert_eq!(reply.body, br#"{"message":"invalid user name or password"}"#);
    /// ```
    pub fn unauthorized(challenge: impl Into<String>, message: &str) -> Self {
        Reply::message(401, message).header("www-authenticate", challenge)
    }

    /// The first value of the header `name` (matched case-insensitively),
    /// if the reply has it.
    ///
    /// ```
    /// use portcullis_sdk::Reply;
    ///
    /// let reply = Reply::new(401).header("WWW-Authenticate", "ApiKey");
    /// assert_eq!(reply.header_value("www-authenticate"), Some("ApiKey"));
    /// assert_eq!(reply.header_value("retry-after"), None);
    /// ```
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body; takes `&str`, `String`, `&[u8]` or `Vec<u8>`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    fn into_wit(self) -> wit::Reply {
        wit::Reply {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }
}

/// Changes to a response, returned by
/// [`Policy::on_response`](crate::Policy::on_response). The gateway applies
/// header changes in the order: remove, set, add.
///
/// ```
/// use portcullis_sdk::ResponseChanges;
///
/// let changes = ResponseChanges::none()
///     .remove_header("server")
///     .set_header("cache-control", "no-store");
/// assert_eq!(changes.status, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct ResponseChanges {
    /// A new status code.
    pub status: Option<u16>,
    /// Headers to remove (every value).
    pub remove_headers: Vec<String>,
    /// Headers to set, replacing every existing value.
    pub set_headers: Vec<(String, String)>,
    /// Headers to add beside existing values.
    pub add_headers: Vec<(String, String)>,
    /// A new response body, replacing the upstream's whether the plugin
    /// read it ([`Policy::RESPONSE_BODY`](crate::Policy::RESPONSE_BODY)) or
    /// not (e.g. a JSON error page); the gateway sets `content-length`.
    pub body: Option<Vec<u8>>,
}

impl ResponseChanges {
    /// No changes: the response goes on as it is.
    pub fn none() -> Self {
        Self::default()
    }

    /// Replaces the status code.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    header_edits!();

    /// Replaces the body (see [`body`](Self#structfield.body)).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub(crate) fn into_wit(self) -> wit::ResponseChanges {
        wit::ResponseChanges {
            status: self.status,
            remove_headers: self.remove_headers,
            set_headers: self.set_headers,
            add_headers: self.add_headers,
            body: self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_continues_with_no_changes() {
        let wit::RequestAction::Continue(changes) = Action::next().into_wit() else {
            panic!("next must continue");
        };
        assert!(changes.remove_headers.is_empty() && changes.set_headers.is_empty());
        assert!(changes.add_headers.is_empty() && changes.attributes.is_empty());
        assert!(changes.method.is_none() && changes.path.is_none() && changes.query.is_none());
        assert!(changes.identity.is_none() && changes.body.is_none());
    }

    #[test]
    fn request_changes_reach_the_wit_record() {
        let action: Action = RequestChanges::new()
            .remove_header("a")
            .set_header("b", "1")
            .add_header("c", "2")
            .method("POST")
            .path("/x")
            .query("q=1")
            .attribute("k", "v")
            .identity(Identity::new("alice").roles(["admin"]).tenant("acme"))
            .body("new")
            .into();
        let wit::RequestAction::Continue(c) = action.into_wit() else {
            panic!("continue expected");
        };
        assert_eq!(c.remove_headers, ["a"]);
        assert_eq!(c.set_headers, [("b".to_owned(), "1".to_owned())]);
        assert_eq!(c.add_headers, [("c".to_owned(), "2".to_owned())]);
        assert_eq!(c.method.as_deref(), Some("POST"));
        assert_eq!(c.path.as_deref(), Some("/x"));
        assert_eq!(c.query.as_deref(), Some("q=1"));
        assert_eq!(c.attributes, [("k".to_owned(), "v".to_owned())]);
        let identity = c.identity.expect("identity");
        assert_eq!(identity.consumer, "alice");
        assert_eq!(identity.roles, ["admin"]);
        assert_eq!(identity.tenant.as_deref(), Some("acme"));
        assert_eq!(c.body.as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn replies_reach_the_wit_record() {
        let action: Action = Reply::new(401)
            .header("www-authenticate", "ApiKey")
            .body("no")
            .into();
        let wit::RequestAction::Respond(reply) = action.into_wit() else {
            panic!("respond expected");
        };
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers,
            [("www-authenticate".to_owned(), "ApiKey".to_owned())]
        );
        assert_eq!(reply.body, b"no");
    }

    #[test]
    fn authenticated_sets_the_identity_and_the_consumer_attribute() {
        let identity = Identity::new("bob").roles(["ops"]).tenant("acme");
        let action: Action = RequestChanges::new()
            .attribute("k", "v")
            .authenticated(identity)
            .into();
        let wit::RequestAction::Continue(c) = action.into_wit() else {
            panic!("continue expected");
        };
        assert_eq!(
            c.attributes,
            [
                ("k".to_owned(), "v".to_owned()),
                ("consumer".to_owned(), "bob".to_owned())
            ]
        );
        let identity = c.identity.expect("identity");
        assert_eq!(identity.consumer, "bob");
        assert_eq!(identity.roles, ["ops"]);
        assert_eq!(identity.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn message_replies_are_json_with_the_message_escaped() {
        let reply = Reply::message(401, r#"no "key" here"#);
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(reply.body, br#"{"message":"no \"key\" here"}"#);
    }

    #[test]
    fn header_value_finds_the_first_value_whatever_the_case() {
        let reply = Reply::new(200)
            .header("Link", "<a>")
            .header("link", "<b>")
            .header("x-empty", "");
        assert_eq!(reply.header_value("LINK"), Some("<a>"));
        assert_eq!(reply.header_value("x-empty"), Some(""));
        assert_eq!(reply.header_value("x-missing"), None);
    }

    #[test]
    fn an_unserializable_json_reply_is_a_500() {
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(vec![1u8], 1);
        let reply = Reply::json(200, &bad);
        assert_eq!(reply.status, 500);
        assert_eq!(
            reply.headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
    }

    #[test]
    fn response_changes_reach_the_wit_record() {
        let c = ResponseChanges::none()
            .status(503)
            .remove_header("a")
            .set_header("b", "1")
            .add_header("c", "2")
            .body(vec![1, 2])
            .into_wit();
        assert_eq!(c.status, Some(503));
        assert_eq!(c.remove_headers, ["a"]);
        assert_eq!(c.set_headers, [("b".to_owned(), "1".to_owned())]);
        assert_eq!(c.add_headers, [("c".to_owned(), "2".to_owned())]);
        assert_eq!(c.body, Some(vec![1, 2]));
        let none = ResponseChanges::none().into_wit();
        assert_eq!(none.status, None);
        assert!(none.body.is_none() && none.set_headers.is_empty());
    }
}
