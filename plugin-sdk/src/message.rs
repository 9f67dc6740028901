//! The request and response a hook sees, and the caller's identity.

use ref_cast::{RefCastCustom, ref_cast_custom};
use serde::de::DeserializeOwned;

use crate::__private::bindings::portcullis::policy::types as wit;

/// The header getters shared by [`Request`] and [`Response`], which both
/// wrap a resource with `header`, `header-values` and `headers`.
macro_rules! header_getters {
    () => {
        /// The first value of a header, if present.
        pub fn header(&self, name: &str) -> Option<String> {
            self.0.header(name)
        }

        /// Every value of a header, in order.
        pub fn header_values(&self, name: &str) -> Vec<String> {
            self.0.header_values(name)
        }

        /// Every header as `(name, value)` pairs, names in lowercase. Prefer
        /// [`header`](Self::header): this copies all of them.
        pub fn headers(&self) -> Vec<(String, String)> {
            self.0.headers()
        }
    };
}

/// The request being processed, as changed by the plugins before this one.
///
/// Each getter asks the gateway for one thing, so a plugin pays only for
/// what it reads; call a getter once and keep the value rather than calling
/// it again. Header names are matched case-insensitively.
///
/// A `Request` is valid only during the hook call it is passed to.
#[derive(RefCastCustom)]
#[repr(transparent)]
pub struct Request(wit::Request);

impl Request {
    #[ref_cast_custom]
    pub(crate) fn from_wit(req: &wit::Request) -> &Self;

    /// The method, e.g. `GET`.
    pub fn method(&self) -> String {
        self.0.method()
    }

    /// The path, without the query, e.g. `/v1/users/42`.
    pub fn path(&self) -> String {
        self.0.path()
    }

    /// The raw query string without the `?`, if the request has one.
    pub fn query(&self) -> Option<String> {
        self.0.query()
    }

    /// The first value of the query parameter `name`, percent-decoded (and
    /// with `+` read as a space, as in HTML forms), if present. `name` is
    /// compared with the decoded parameter names, case-sensitively.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query().and_then(|query| query_param(&query, name))
    }

    header_getters!();

    /// The client's IP address as text, e.g. `203.0.113.7` or `::1`.
    pub fn client_ip(&self) -> String {
        self.0.client_ip()
    }

    /// The certificate the client presented and the gateway verified, on a
    /// listener with mutual TLS; `None` on other listeners and for clients
    /// that sent none (`mode = "optional"`).
    pub fn client_certificate(&self) -> Option<ClientCertificate> {
        self.0.client_certificate().map(ClientCertificate::from_wit)
    }

    /// The name of the route that matched, from the gateway config.
    pub fn route(&self) -> String {
        self.0.route()
    }

    /// The identity attached by an earlier plugin, if any.
    pub fn identity(&self) -> Option<Identity> {
        self.0.identity().map(Identity::from_wit)
    }

    /// An attribute set by an earlier plugin, if any.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.0.attribute(key)
    }

    /// What an earlier hook of this request carried under `key` with
    /// [`RequestChanges::carry`](crate::RequestChanges::carry): `Ok(None)`
    /// if nothing was, an error if the attribute does not hold a `T`
    /// (another plugin used the same key).
    pub fn carried<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        match self.attribute(key) {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| format!("the attribute `{key}` does not hold what was carried: {e}")),
        }
    }

    /// The request body: [`Body::NotRequested`] unless a plugin on the
    /// route sets [`Policy::REQUEST_BODY`](crate::Policy::REQUEST_BODY).
    pub fn body(&self) -> Body {
        Body::from_wit(self.0.body())
    }
}

/// The upstream's response (or the reply of an earlier plugin), as changed
/// by the plugins that ran before this one in the response phase.
///
/// Like [`Request`], each getter is one call to the gateway, and a
/// `Response` is valid only during the hook call it is passed to.
#[derive(RefCastCustom)]
#[repr(transparent)]
pub struct Response(wit::Response);

impl Response {
    #[ref_cast_custom]
    pub(crate) fn from_wit(resp: &wit::Response) -> &Self;

    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status()
    }

    header_getters!();

    /// The response body: [`Body::NotRequested`] unless a plugin on the
    /// route sets [`Policy::RESPONSE_BODY`](crate::Policy::RESPONSE_BODY).
    pub fn body(&self) -> Body {
        Body::from_wit(self.0.body())
    }
}

/// A message body as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No plugin on the route asked for bodies ([`Policy::REQUEST_BODY`],
    /// [`Policy::RESPONSE_BODY`]), so none was read.
    ///
    /// [`Policy::REQUEST_BODY`]: crate::Policy::REQUEST_BODY
    /// [`Policy::RESPONSE_BODY`]: crate::Policy::RESPONSE_BODY
    NotRequested,
    /// The body is larger than the gateway's `limits.max_body_bytes`; it is
    /// passed on untouched unless a plugin replaces it.
    TooLarge,
    /// The whole body (possibly empty).
    Complete(Vec<u8>),
}

impl Body {
    fn from_wit(body: wit::Body) -> Self {
        match body {
            wit::Body::NotRequested => Body::NotRequested,
            wit::Body::TooLarge => Body::TooLarge,
            wit::Body::Complete(bytes) => Body::Complete(bytes),
        }
    }
}

/// A client certificate the gateway verified during the TLS handshake, on
/// a listener with mutual TLS (`[listeners.tls.client_auth]`).
///
/// ```
/// use portcullis_sdk::ClientCertificate;
///
/// // In a unit test: start from the default and set what matters.
/// let mut cert = ClientCertificate::default();
/// cert.subject = "O=Example Corp, CN=billing".into();
/// cert.uris = vec!["spiffe://example.org/billing".into()];
/// assert!(cert.dns_names.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ClientCertificate {
    /// The subject's distinguished name: attributes in the certificate's
    /// order, separated by `, `, special characters escaped as in RFC 4514,
    /// e.g. `C=US, O=Example Corp, CN=billing` (what `openssl x509 -noout
    /// -subject` prints).
    pub subject: String,
    /// The issuer's distinguished name, in the same form.
    pub issuer: String,
    /// The DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// The URIs among the subject alternative names (SPIFFE IDs, say).
    pub uris: Vec<String>,
    /// The e-mail addresses among the subject alternative names.
    pub emails: Vec<String>,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub sha256: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// The end of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl ClientCertificate {
    fn from_wit(cert: wit::ClientCertificate) -> Self {
        ClientCertificate {
            subject: cert.subject,
            issuer: cert.issuer,
            dns_names: cert.dns_names,
            uris: cert.uris,
            emails: cert.emails,
            sha256: cert.sha256,
            serial: cert.serial,
            not_after: cert.not_after,
        }
    }
}

/// The caller's identity, as established by an authentication plugin and
/// read by the plugins after it.
///
/// ```
/// use portcullis_sdk::Identity;
///
/// let alice = Identity::new("alice").roles(["admin", "billing"]).tenant("acme");
/// assert_eq!(alice.consumer, "alice");
/// assert_eq!(alice.roles, ["admin", "billing"]);
/// assert_eq!(alice.tenant.as_deref(), Some("acme"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Identity {
    /// Who the caller is: a consumer name, user name or token subject.
    pub consumer: String,
    /// Roles granted to the caller.
    pub roles: Vec<String>,
    /// The tenant the caller belongs to, if the deployment has tenants.
    pub tenant: Option<String>,
}

impl Identity {
    /// An identity with no roles and no tenant.
    pub fn new(consumer: impl Into<String>) -> Self {
        Identity {
            consumer: consumer.into(),
            roles: Vec::new(),
            tenant: None,
        }
    }

    /// Replaces the roles.
    pub fn roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    pub(crate) fn from_wit(identity: wit::Identity) -> Self {
        Identity {
            consumer: identity.consumer,
            roles: identity.roles,
            tenant: identity.tenant,
        }
    }

    pub(crate) fn into_wit(self) -> wit::Identity {
        wit::Identity {
            consumer: self.consumer,
            roles: self.roles,
            tenant: self.tenant,
        }
    }
}

/// The first value of the parameter `name` in a raw query string, decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let query = "a=1&name=J%C3%BCrgen+M&empty=&flag&a=2&sp%61ced=yes";
        assert_eq!(query_param(query, "a").as_deref(), Some("1"));
        assert_eq!(query_param(query, "name").as_deref(), Some("Jürgen M"));
        assert_eq!(query_param(query, "empty").as_deref(), Some(""));
        assert_eq!(query_param(query, "flag").as_deref(), Some(""));
        assert_eq!(query_param(query, "spaced").as_deref(), Some("yes"));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(query_param("", "a"), None);
    }

    #[test]
    fn identities_convert_both_ways() {
        let identity = Identity::new("bob").roles(vec![String::from("reader")]);
        let back = Identity::from_wit(identity.clone().into_wit());
        assert_eq!(back, identity);
        assert_eq!(back.tenant, None);
    }
}
