//! Applying what a plugin returned: request changes (headers, method,
//! path, query, body, identity, attributes), replies, and response
//! changes, each checked (a bad header name or value is the plugin's
//! failure, never a malformed message sent on).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Response, StatusCode, Uri};

use crate::body::{self, ProxyBody};
use crate::plugin::view::{BodyView, RequestView, ResponseView};
use crate::plugin::{PluginError, Reply, RequestAction, RequestChanges, ResponseChanges};

pub(crate) fn bad(what: impl Into<String>) -> PluginError {
    PluginError::BadResult(what.into())
}

pub(crate) fn header_name(name: &str) -> Result<HeaderName, PluginError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad(format!("invalid header name `{name}`")))
}

pub(crate) fn header_value(name: &str, value: &str) -> Result<HeaderValue, PluginError> {
    HeaderValue::from_str(value).map_err(|_| bad(format!("invalid value for header `{name}`")))
}

/// Header changes, checked: a plugin's changes are validated whole before
/// any is applied, so an invalid result leaves the message untouched (which
/// matters with `on_error = "allow"`).
pub(crate) struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    fn parse(
        remove: &[String],
        set: &[(String, String)],
        add: &[(String, String)],
    ) -> Result<Self, PluginError> {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .map(|(n, v)| Ok((header_name(n)?, header_value(n, v)?)))
                .collect::<Result<Vec<_>, PluginError>>()
        };
        Ok(Self {
            remove: remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
            set: pairs(set)?,
            add: pairs(add)?,
        })
    }

    /// Applies the changes in the contract's order: remove, set, add.
    fn apply(self, headers: &mut HeaderMap) {
        for name in self.remove {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
        for (name, value) in self.add {
            headers.append(name, value);
        }
    }
}

/// Replaces a body (whether the plugins read it or not; an unread one is
/// dropped), keeping the framing headers right.
pub(crate) fn replace_body(
    headers: &mut HeaderMap,
    view: &mut BodyView,
    body: &mut ProxyBody,
    new: Vec<u8>,
) {
    let new = Bytes::from(new);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
    *body = body::full(new.clone());
    // Plugins that read bodies see the new one; on routes where none does,
    // they keep seeing `not-requested`.
    if !matches!(view, BodyView::NotRequested) {
        *view = BodyView::Complete(new);
    }
}

/// Applies a plugin's decision; `Some` is the reply that ends the request.
pub(crate) fn apply_action(
    request: &mut RequestView,
    body: &mut ProxyBody,
    action: RequestAction,
) -> Result<Option<Response<ProxyBody>>, PluginError> {
    match action {
        RequestAction::Continue(changes) => apply_request(request, body, changes).map(|()| None),
        RequestAction::Respond(reply) => reply_response(reply).map(Some),
    }
}

pub(crate) fn apply_request(
    request: &mut RequestView,
    body: &mut ProxyBody,
    changes: RequestChanges,
) -> Result<(), PluginError> {
    let RequestChanges {
        remove_headers,
        set_headers,
        add_headers,
        method,
        path,
        query,
        attributes,
        identity,
        body: new_body,
    } = changes;
    let head = &mut request.head;
    // Everything fallible first; nothing changes unless all of it is valid.
    let edits = HeaderEdits::parse(&remove_headers, &set_headers, &add_headers)?;
    let method = method
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| bad(format!("invalid method `{m}`"))))
        .transpose()?;
    let uri = if path.is_some() || query.is_some() {
        let path = path.unwrap_or_else(|| head.uri.path().to_owned());
        if !path.starts_with('/') {
            return Err(bad(format!("path `{path}` does not start with `/`")));
        }
        // The plugins after this one and the upstream see the normal form,
        // as for a client's path: a rewrite cannot bring back `..`.
        let path = crate::path::normalize(&path)
            .map_err(|e| bad(format!("path `{path}`: {e}")))?
            .into_owned();
        let query = match query {
            Some(q) if q.is_empty() => None,
            Some(q) => Some(q),
            None => head.uri.query().map(str::to_owned),
        };
        let text = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let pq = PathAndQuery::try_from(text.as_str())
            .map_err(|_| bad(format!("invalid path or query `{text}`")))?;
        Some(Uri::from(pq))
    } else {
        None
    };
    edits.apply(&mut head.headers);
    if let Some(method) = method {
        head.method = method;
    }
    if let Some(uri) = uri {
        head.uri = uri;
    }
    for (key, value) in attributes {
        request.set_attribute(key, value);
    }
    if identity.is_some() {
        request.identity = identity;
    }
    if let Some(new) = new_body {
        replace_body(&mut request.head.headers, &mut request.body, body, new);
    }
    Ok(())
}

pub(crate) fn reply_response(reply: Reply) -> Result<Response<ProxyBody>, PluginError> {
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| {
            bad(format!(
                "reply status {} is not between 200 and 599",
                reply.status
            ))
        })?;
    let mut response = Response::new(body::full(reply.body));
    *response.status_mut() = status;
    HeaderEdits::parse(&[], &[], &reply.headers)?.apply(response.headers_mut());
    Ok(response)
}

pub(crate) fn apply_response(
    response: &mut ResponseView,
    body: &mut ProxyBody,
    changes: ResponseChanges,
) -> Result<(), PluginError> {
    let status = changes
        .status
        .map(|status| {
            StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .ok_or_else(|| bad(format!("status {status} is not between 200 and 599")))
        })
        .transpose()?;
    let edits = HeaderEdits::parse(
        &changes.remove_headers,
        &changes.set_headers,
        &changes.add_headers,
    )?;
    if let Some(status) = status {
        response.head.status = status;
    }
    edits.apply(&mut response.head.headers);
    if let Some(new) = changes.body {
        replace_body(&mut response.head.headers, &mut response.body, body, new);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn view(uri: &str) -> RequestView {
        let (head, ()) = Request::builder()
            .uri(uri)
            .body(())
            .expect("request")
            .into_parts();
        RequestView {
            head,
            client_ip: "127.0.0.1".parse().expect("ip"),
            client_certificate: None,
            route: "r".into(),
            identity: None,
            attributes: Vec::new(),
            body: BodyView::NotRequested,
        }
    }

    fn changes() -> RequestChanges {
        RequestChanges {
            remove_headers: vec![],
            set_headers: vec![],
            add_headers: vec![],
            method: None,
            path: None,
            query: None,
            attributes: vec![],
            identity: None,
            body: None,
        }
    }

    #[test]
    fn a_rewritten_path_is_normalised_or_refused() {
        let mut request = view("/api/x");
        let mut body = body::empty();
        let mut change = changes();
        change.path = Some("/api/../admin//x".into());
        apply_request(&mut request, &mut body, change).expect("applies");
        assert_eq!(request.head.uri.path(), "/admin/x");
        let mut change = changes();
        change.path = Some("/open/..;/admin".into());
        assert!(apply_request(&mut request, &mut body, change).is_err());
        assert_eq!(
            request.head.uri.path(),
            "/admin/x",
            "unchanged when refused"
        );
    }

    #[test]
    fn path_and_query_rewrites() {
        let mut v = view("/a?x=1");
        let mut b = body::empty();
        apply_request(
            &mut v,
            &mut b,
            RequestChanges {
                query: Some(String::new()),
                ..changes()
            },
        )
        .expect("ok");
        assert_eq!(v.head.uri, "/a");
        apply_request(
            &mut v,
            &mut b,
            RequestChanges {
                path: Some("/b".into()),
                query: Some("y=2".into()),
                ..changes()
            },
        )
        .expect("ok");
        assert_eq!(v.head.uri, "/b?y=2");
        let err = apply_request(
            &mut v,
            &mut b,
            RequestChanges {
                path: Some("nope".into()),
                ..changes()
            },
        );
        assert!(matches!(err, Err(PluginError::BadResult(_))));
    }

    #[test]
    fn header_changes_apply_remove_then_set_then_add() {
        let mut v = view("/");
        v.head
            .headers
            .insert("x-a", HeaderValue::from_static("old"));
        let mut b = body::empty();
        let c = RequestChanges {
            remove_headers: vec!["x-a".into()],
            set_headers: vec![("x-b".into(), "1".into())],
            add_headers: vec![("x-b".into(), "2".into()), ("x-a".into(), "new".into())],
            attributes: vec![("k".into(), "v".into())],
            ..changes()
        };
        apply_request(&mut v, &mut b, c).expect("ok");
        assert_eq!(v.head.headers.get_all("x-b").iter().count(), 2);
        assert_eq!(v.head.headers["x-a"], "new");
        assert_eq!(v.attribute("k"), Some("v"));
        let bad_header = RequestChanges {
            remove_headers: vec!["x-a".into()],
            set_headers: vec![("bad header".into(), "1".into())],
            path: Some("/moved".into()),
            ..changes()
        };
        assert!(apply_request(&mut v, &mut b, bad_header).is_err());
        assert_eq!(
            v.head.headers["x-a"], "new",
            "an invalid result changes nothing"
        );
        assert_eq!(v.head.uri, "/");
    }

    #[tokio::test]
    async fn a_replaced_body_gets_a_matching_content_length() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let mut view = BodyView::NotRequested;
        let mut body = body::empty();
        replace_body(
            &mut headers,
            &mut view,
            &mut body,
            b"{\"error\":\"masked\"}".to_vec(),
        );
        assert_eq!(headers[header::CONTENT_LENGTH], "18");
        assert!(!headers.contains_key(header::TRANSFER_ENCODING));
        assert!(
            matches!(view, BodyView::NotRequested),
            "routes that read no body keep not-requested"
        );
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(bytes, "{\"error\":\"masked\"}");

        let mut view = BodyView::Complete(Bytes::from_static(b"old"));
        let mut body = body::empty();
        replace_body(&mut headers, &mut view, &mut body, b"new".to_vec());
        assert!(matches!(view, BodyView::Complete(b) if b == "new"));
    }

    #[test]
    fn replies_need_a_final_status() {
        let ok = Reply {
            status: 401,
            headers: vec![("www-authenticate".into(), "ApiKey".into())],
            body: b"no".to_vec(),
        };
        assert_eq!(
            reply_response(ok).expect("valid").status(),
            StatusCode::UNAUTHORIZED
        );
        let informational = Reply {
            status: 101,
            headers: vec![],
            body: vec![],
        };
        assert!(reply_response(informational).is_err());
    }
}
