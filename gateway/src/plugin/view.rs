//! What a plugin call sees of a request and a response.
//!
//! The pipeline moves its own request head into a [`RequestView`] for the
//! length of a call and takes it back afterwards, so a call copies nothing up
//! front: the plugin's getters copy only what the plugin reads.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use super::bindings::portcullis::policy::types::{Body as WitBody, ClientCertificate, Identity};

/// Marker for the `request` resource: the host keeps one request per call, so
/// the handle carries no data and the getters read the store's current view.
pub struct RequestHandle;

/// Marker for the `response` resource (see [`RequestHandle`]).
pub struct ResponseHandle;

/// A body as plugins see it.
#[derive(Debug, Clone, Default)]
pub enum BodyView {
    /// No plugin on this route asked for it, so it is streamed.
    #[default]
    NotRequested,
    /// Larger than the cap; streamed untouched.
    TooLarge,
    /// Buffered whole.
    Complete(Bytes),
}

impl BodyView {
    pub(crate) fn to_wit(&self) -> WitBody {
        match self {
            BodyView::NotRequested => WitBody::NotRequested,
            BodyView::TooLarge => WitBody::TooLarge,
            BodyView::Complete(bytes) => WitBody::Complete(bytes.to_vec()),
        }
    }
}

/// The request as the next plugin will see it.
#[derive(Debug, Clone)]
pub struct RequestView {
    /// Method, URI and headers, owned by the pipeline between calls.
    pub head: http::request::Parts,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The verified client certificate (mutual TLS).
    pub client_certificate: Option<Arc<ClientCertificate>>,
    /// The route's name.
    pub route: Arc<str>,
    /// Identity attached by an earlier plugin.
    pub identity: Option<Identity>,
    /// Attributes set by earlier plugins, in the order they were first set.
    pub attributes: Vec<(String, String)>,
    /// The body, if a plugin on the route reads it.
    pub body: BodyView,
}

impl RequestView {
    /// The value of an attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an attribute, replacing an earlier value.
    pub fn set_attribute(&mut self, key: String, value: String) {
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }
}

/// The response as the next plugin will see it.
#[derive(Debug)]
pub struct ResponseView {
    /// Status and headers.
    pub head: http::response::Parts,
    /// The body, if a plugin on the route reads it.
    pub body: BodyView,
}

/// The first value of a header, as text (lossy for non-UTF-8 values).
pub(crate) fn header_first(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(value_text)
}

/// Every value of a header, as text.
pub(crate) fn header_all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(value_text).collect()
}

/// Every header, as text.
pub(crate) fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_text(v)))
        .collect()
}

fn value_text(value: &http::HeaderValue) -> String {
    match value.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    }
}
