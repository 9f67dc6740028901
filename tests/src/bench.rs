//! Support for the benchmarks (`benches/`): the engine and host services
//! they run plugins on, and the request they call plugins with.

use std::sync::Arc;

use http::Request;
use portcullis::alerts;
use portcullis::clock::{Clock, SystemClock};
use portcullis::plugin::engine::EngineLimits;
use portcullis::plugin::view::{BodyView, RequestView, ResponseView};
use portcullis::plugin::{HostServices, Identity, PluginEngine};
use portcullis::state::{Budget, InMemoryStore};

/// A plugin engine with `limits`, and the host services its plugins call:
/// the system clock, a shared store of at most `store_entries` entries per
/// plugin, and
/// an alert queue nobody reads (alerts are dropped once 16 are queued).
pub fn engine(
    limits: EngineLimits,
    store_entries: usize,
) -> (Arc<PluginEngine>, Arc<HostServices>) {
    let engine = PluginEngine::new(limits).expect("engine");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (alerts, rx) = alerts::queue(16);
    std::mem::forget(rx);
    let services = HostServices {
        store: Arc::new(InMemoryStore::new(
            Budget {
                max_entries: store_entries,
                max_bytes: usize::MAX,
            },
            clock.clone(),
        )),
        alerts,
        clock,
        metrics: Default::default(),
        spans: None,
    };
    (Arc::new(engine), Arc::new(services))
}

/// A request like a typical API call, as the pipeline hands it to a plugin:
/// `method uri` from 198.51.100.23 on the route `bench`, with eleven common
/// headers (host, user agent, content negotiation, cache control, request
/// id, trace context, cookie, forwarding) followed by `extra`.
pub fn api_request(
    method: &str,
    uri: &str,
    extra: &[(&str, &str)],
    identity: Option<Identity>,
    body: BodyView,
) -> RequestView {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example.com")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .header("accept-language", "en-US,en;q=0.9")
        .header("cache-control", "no-cache")
        .header("connection", "keep-alive")
        .header("x-request-id", "7f9c2ba4-e88f-4c1b-9a5e-3d2f1c0b8a71")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("cookie", "session=abc123; theme=dark")
        .header("x-forwarded-for", "198.51.100.23");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let (head, ()) = builder.body(()).expect("request").into_parts();
    RequestView {
        head,
        client_ip: "198.51.100.23".parse().expect("ip"),
        client_certificate: None,
        route: "bench".into(),
        identity,
        attributes: Vec::new(),
        body,
    }
}

/// A response as an upstream sends it, as the pipeline hands it to a
/// plugin: 200, JSON, `content-length: 512`, a date.
pub fn ok_response() -> ResponseView {
    let (head, ()) = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("content-length", "512")
        .header("date", "Tue, 01 Dec 2026 10:00:00 GMT")
        .body(())
        .expect("response")
        .into_parts();
    ResponseView {
        head,
        body: BodyView::NotRequested,
    }
}
