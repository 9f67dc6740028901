//! Outbound HTTP from plugins (contract 0.2.3): what the grant of
//! `[routes.plugins.outbound]` lets through, and what it stops before a
//! socket opens. The misbehave fixture's `fetch_path` fetches whatever URL
//! the request names, which is exactly what a grant must hold in check.

use bytes::Bytes;
use http::{Method, StatusCode};
use portcullis_tests::echo::Echo;
use portcullis_tests::idp::{Idp, IdpState};
use portcullis_tests::prom::Scrape;
use portcullis_tests::tls::{TestCa, server_config};
use portcullis_tests::{Client, Reply, TestGateway, base_config, fixtures, route};

/// `/fetch` may call `idp` (and `localhost` on its port, by name, which
/// resolves to loopback and is not listed as private); `/follow` may call
/// `idp` and `other`, following 2 redirects; `/nogrant` has no grant.
fn routes(idp: &Idp, other: &Idp) -> String {
    let port = idp.addr().port();
    let (idp, other) = (idp.origin(), other.origin());
    [
        "\n[admin]\naddress = \"127.0.0.1:0\"\n".to_owned(),
        fetch_route(
            "fetch",
            &format!(
                "allow = [\"{idp}\", \"http://localhost:{port}\"]\nmax_response_bytes = 65536\ntimeout_ms = 1000"
            ),
        ),
        fetch_route(
            "follow",
            &format!("allow = [\"{idp}\", \"{other}\"]\nmax_redirects = 2"),
        ),
        fetch_route("nogrant", ""),
    ]
    .concat()
}

/// `/<name>` through misbehave fetching on `/<name>`, with `grant` as its
/// `[routes.plugins.outbound]` table (none when empty).
fn fetch_route(name: &str, grant: &str) -> String {
    let config = format!("mode = \"none\"\nfetch_path = \"/{name}\"");
    let mut toml = route(name, &format!("/{name}"), &[("misbehave", &config)]);
    if !grant.is_empty() {
        toml.push_str(&format!("[routes.plugins.outbound]\n{grant}\n"));
    }
    toml
}

async fn fetch(gw: &TestGateway, path: &str, url: &str) -> Reply {
    Client::new()
        .get(&gw.url(path), &[("x-fetch-url", url)])
        .await
        .expect("gateway answers")
}

fn error_of(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    (
        reply.header("x-fetch-error").unwrap_or_default().to_owned(),
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// A gateway with [`routes`]: `idp` (serving an empty JWKS) and `other`.
async fn granted() -> (TestGateway, Echo, Idp, Idp) {
    let echo = Echo::start_local().await.expect("echo");
    let idp = Idp::start(IdpState {
        jwks: r#"{"keys":[]}"#.into(),
        ..IdpState::default()
    })
    .await;
    let other = Idp::start(IdpState::default()).await;
    let config = format!("{}{}", base_config(echo.addr), routes(&idp, &other));
    let gw = TestGateway::start(&config, &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("gateway starts");
    (gw, echo, idp, other)
}

#[tokio::test]
async fn a_grant_lets_through_its_origins_and_nothing_else() {
    let (gw, _echo, idp, other) = granted().await;
    let outsider = Idp::start(IdpState::default()).await;

    // Granted: the answer comes back to the plugin.
    let reply = fetch(&gw, "/fetch", &idp.url("/jwks")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("x-fetch-status"), Some("200"));
    assert_eq!(&reply.body[..], br#"{"keys":[]}"#);
    assert_eq!(idp.hits("/jwks"), 1);

    // Another origin (another port of the same address): refused before
    // a socket opens.
    let reply = fetch(&gw, "/fetch", &other.url("/jwks")).await;
    let (kind, message) = error_of(&reply);
    assert_eq!(kind, "not-allowed", "{message}");
    assert!(message.contains(&other.addr().to_string()), "{message}");
    assert_eq!(other.hits("/jwks"), 0);

    // A name in the allow-list that resolves to loopback, not listed in
    // `private_hosts`: refused by the resolver's check.
    let port = idp.addr().port();
    let reply = fetch(&gw, "/fetch", &format!("http://localhost:{port}/jwks")).await;
    let (kind, message) = error_of(&reply);
    assert_eq!(kind, "private-address", "{message}");
    assert_eq!(idp.hits("/jwks"), 1, "the provider saw no second request");

    // Not a URL the gateway sends: user information, another scheme.
    for url in [
        format!("http://user:pw@{}/jwks", idp.addr()),
        format!("ftp://{}/jwks", idp.addr()),
        "/jwks".to_owned(),
    ] {
        let (kind, message) = error_of(&fetch(&gw, "/fetch", &url).await);
        assert_eq!(kind, "invalid-request", "{url}: {message}");
    }

    // A redirect is not followed without `max_redirects`: the plugin gets
    // the 302, and the target sees nothing.
    let to = form_urlencoded::byte_serialize(outsider.url("/jwks").as_bytes()).collect::<String>();
    let reply = fetch(&gw, "/fetch", &idp.url(&format!("/redirect?to={to}"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("x-fetch-status"), Some("302"));
    assert_eq!(outsider.hits("/jwks"), 0);

    // Followed where allowed: to an origin of the grant, yes; out of it,
    // refused before the second request.
    let to_other =
        form_urlencoded::byte_serialize(other.url("/jwks").as_bytes()).collect::<String>();
    let reply = fetch(
        &gw,
        "/follow",
        &idp.url(&format!("/redirect?to={to_other}")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("x-fetch-status"), Some("200"));
    assert_eq!(other.hits("/jwks"), 1);
    let reply = fetch(&gw, "/follow", &idp.url(&format!("/redirect?to={to}"))).await;
    let (kind, message) = error_of(&reply);
    assert_eq!(kind, "not-allowed", "{message}");
    assert_eq!(
        outsider.hits("/jwks"),
        0,
        "the redirect's target saw nothing"
    );

    // Caps: the body, the time.
    let (kind, _) = error_of(&fetch(&gw, "/fetch", &idp.url("/big")).await);
    assert_eq!(kind, "too-large");
    let (kind, _) = error_of(&fetch(&gw, "/fetch", &idp.url("/slow")).await);
    assert_eq!(kind, "timeout");

    // No grant, no call.
    let (kind, _) = error_of(&fetch(&gw, "/nogrant", &idp.url("/jwks")).await);
    assert_eq!(kind, "not-granted");

    // Counted by outcome.
    let addr = gw.handle.admin_addr().expect("admin");
    let text = Client::new()
        .request(
            Method::GET,
            &format!("http://{addr}/metrics"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("metrics");
    let scrape = Scrape::parse(&String::from_utf8_lossy(&text.body)).expect("parses");
    let calls = |route: &str, outcome: &str| {
        scrape.value(
            "portcullis_plugin_http_calls_total",
            &[
                ("plugin", "misbehave"),
                ("route", route),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("fetch", "ok"), 2.0);
    // other's origin, localhost, three invalid URLs.
    assert_eq!(calls("fetch", "refused"), 5.0);
    assert_eq!(calls("fetch", "too_large"), 1.0);
    assert_eq!(calls("fetch", "timeout"), 1.0);
    assert_eq!(calls("follow", "ok"), 1.0);
    assert_eq!(calls("follow", "refused"), 1.0);
}

#[tokio::test]
async fn https_is_verified_against_the_webpki_roots_or_the_grants_ca() {
    let ca = TestCa::new();
    let issued = ca.issue(&["127.0.0.1"], -1, 30);
    let idp = Idp::start_tls(
        IdpState {
            jwks: r#"{"keys":[]}"#.into(),
            ..IdpState::default()
        },
        server_config(&issued, None, &[b"http/1.1"]),
    )
    .await;
    let echo = Echo::start_local().await.expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("CA written");
    let allow = format!("allow = [\"{}\"]", idp.origin());
    let config = format!(
        "{}{}{}",
        base_config(echo.addr),
        fetch_route("roots", &allow),
        fetch_route(
            "private",
            &format!("{allow}\nca = {:?}", ca_file.display().to_string())
        )
    );
    let gw = TestGateway::start(&config, &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("gateway starts");

    // The Mozilla roots do not know the test CA: the handshake fails, and
    // the provider never sees a request.
    let reply = fetch(&gw, "/roots", &idp.url("/jwks")).await;
    let (kind, message) = error_of(&reply);
    assert_eq!(kind, "connect", "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(idp.hits("/jwks"), 0);

    // With the CA in the grant, it is verified and answered.
    let reply = fetch(&gw, "/private", &idp.url("/jwks")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("x-fetch-status"), Some("200"));
    assert_eq!(idp.hits("/jwks"), 1);
}

#[tokio::test]
async fn a_plugin_waiting_on_the_network_holds_no_thread() {
    // The test runtime has one thread. A plugin call waiting for the slow
    // path (cut at 1 s by the grant) must leave it free: a second request
    // through the same plugin is answered first.
    let (gw, _echo, idp, _other) = granted().await;
    let order = std::sync::Mutex::new(Vec::new());
    let slow = async {
        let reply = fetch(&gw, "/fetch", &idp.url("/slow")).await;
        order.lock().expect("order").push("slow");
        reply
    };
    let quick = async {
        // Sent once the slow call is waiting on the provider.
        while idp.hits("/slow") == 0 {
            tokio::task::yield_now().await;
        }
        let reply = fetch(&gw, "/fetch", &idp.url("/jwks")).await;
        order.lock().expect("order").push("quick");
        reply
    };
    let (slow, quick) = tokio::join!(slow, quick);
    assert_eq!(quick.status, StatusCode::OK, "{quick:?}");
    assert_eq!(error_of(&slow).0, "timeout");
    assert_eq!(*order.lock().expect("order"), ["quick", "slow"]);
}

#[tokio::test]
async fn a_tick_waiting_on_the_network_holds_back_no_other_tick() {
    let echo = Echo::start_local().await.expect("echo");
    let idp = Idp::start(IdpState::default()).await;
    // Two routes whose plugin fetches on every tick (every 20 ms): one
    // from a path the provider answers after 5 s, one from a quick one.
    let ticking = |name: &str, path: &str| {
        let config = format!("mode = \"none\"\ntick_fetch = \"{}\"", idp.url(path));
        format!(
            "{}[routes.plugins.outbound]\nallow = [\"{}\"]\ntimeout_ms = 60000\n",
            route(name, &format!("/{name}"), &[("misbehave", &config)]),
            idp.origin()
        )
    };
    let config = format!(
        "{}{}{}",
        base_config(echo.addr),
        ticking("stalled", "/slow"),
        ticking("brisk", "/jwks")
    );
    let _gw = TestGateway::start(&config, &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("gateway starts");

    // The gateway serves its optimized builds, a generation after the
    // baseline ones (whose pools ticked too). A round of this generation
    // later, its `stalled` tick waits for the answer...
    idp.until_hits("/slow", 1).await;
    let brisk = idp.hits("/jwks");
    idp.until_hits("/jwks", brisk + 2).await;
    let slow = idp.hits("/slow");
    // ...while `brisk` ticks on, and `stalled` is skipped rather than
    // ticked again.
    idp.until_hits("/jwks", brisk + 5).await;
    assert_eq!(
        idp.hits("/slow"),
        slow,
        "a pool whose tick is in flight is not ticked again"
    );
}

#[tokio::test]
async fn a_bad_grant_is_refused_by_key() {
    let routes = fetch_route(
        "api",
        r#"allow = ["https://idp.example.com/realms/main", "idp.example.com"]
private_hosts = ["sso.internal"]
timeout_ms = 0"#,
    );
    portcullis_tests::assert_config_refused(
        &routes,
        &[("misbehave", fixtures::MISBEHAVE)],
        &[
            "routes[0].plugins[0].outbound.allow[0]",
            "without a path",
            "routes[0].plugins[0].outbound.allow[1]",
            "routes[0].plugins[0].outbound.private_hosts[0]",
            "routes[0].plugins[0].outbound.timeout_ms",
        ],
    )
    .await;
}
