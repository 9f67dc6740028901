//! The rbac plugin behind key-auth, end to end over real sockets: roles,
//! tenant isolation, deny rules, anonymous access and paths that try to
//! step out of a pattern.

use http::{Method, StatusCode};
use portcullis_tests::echo::Echo;
use portcullis_tests::{
    Client, Reply, TestGateway, assert_config_refused, fixtures, route, start_routes,
};

const PLUGINS: &[(&str, &str)] = &[("key_auth", fixtures::KEY_AUTH), ("rbac", fixtures::RBAC)];

fn routes() -> String {
    let api = route(
        "api",
        "/api",
        &[
            (
                "key_auth",
                r#"keys = [
    { consumer = "alice", key = "alice-key", roles = ["admin"], tenant = "acme" },
    { consumer = "bob", key = "bob-key", roles = ["member"], tenant = "acme" },
    { consumer = "carol", key = "carol-key", roles = ["member"], tenant = "globex" },
    { consumer = "dave", key = "dave-key", roles = ["member"] },
    { consumer = "erin", key = "erin-key", roles = ["auditor"], tenant = "acme" },
]"#,
            ),
            (
                "rbac",
                r#"rules = [
    { roles = ["admin"], paths = ["/api/**"] },
    { roles = ["member"], methods = ["GET", "POST"], paths = ["/api/tenants/{tenant}/**"], require_tenant = "tenant" },
    { roles = ["*"], methods = ["GET"], paths = ["/api/me"] },
    { effect = "deny", roles = ["*"], methods = ["DELETE"], paths = ["/api/audit/**"] },
]"#,
            ),
        ],
    );
    let open = route(
        "open",
        "/open",
        &[(
            "rbac",
            r#"www_authenticate = 'ApiKey realm="open"'
rules = [{ anonymous = true, methods = ["GET"], paths = ["/open/health"] }]"#,
        )],
    );
    api + &open
}

async fn gateway() -> (TestGateway, Echo) {
    start_routes(&routes(), PLUGINS).await
}

async fn call(gw: &TestGateway, method: Method, path: &str, key: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    Client::new()
        .request(method, &gw.url(path), &headers, "")
        .await
        .expect("response")
}

fn assert_passed(reply: &Reply, path: &str) {
    reply.assert_ok();
    assert_eq!(reply.seen().path, path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_and_everything_else_is_denied() {
    let (gw, _echo) = gateway().await;

    let path = "/api/admin/settings";
    assert_passed(&call(&gw, Method::PUT, path, Some("alice-key")).await, path);
    (call(&gw, Method::GET, path, Some("bob-key")).await)
        .assert_refused(StatusCode::FORBIDDEN, "forbidden");
    // `*`: any identity, whatever its roles.
    assert_passed(
        &call(&gw, Method::GET, "/api/me", Some("erin-key")).await,
        "/api/me",
    );
    (call(&gw, Method::POST, "/api/me", Some("erin-key")).await)
        .assert_refused(StatusCode::FORBIDDEN, "forbidden");
    // key-auth answers before rbac when there is no key at all.
    let anonymous = call(&gw, Method::GET, "/api/me", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(
        anonymous
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("ApiKey"))
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reach_only_their_own_tenant() {
    let (gw, _echo) = gateway().await;

    let own = "/api/tenants/acme/orders/7";
    assert_passed(&call(&gw, Method::GET, own, Some("bob-key")).await, own);
    assert_passed(&call(&gw, Method::POST, own, Some("bob-key")).await, own);
    (call(&gw, Method::DELETE, own, Some("bob-key")).await)
        .assert_refused(StatusCode::FORBIDDEN, "forbidden");
    (call(&gw, Method::GET, own, Some("carol-key")).await)
        .assert_refused(StatusCode::FORBIDDEN, "forbidden");
    let globex = "/api/tenants/globex/orders";
    assert_passed(
        &call(&gw, Method::GET, globex, Some("carol-key")).await,
        globex,
    );
    // A member without a tenant matches no tenant.
    (call(&gw, Method::GET, own, Some("dave-key")).await)
        .assert_refused(StatusCode::FORBIDDEN, "forbidden");
    // Percent-encoding is decoded before the comparison, both ways (the
    // gateway decodes unreserved characters before routing).
    assert_passed(
        &call(
            &gw,
            Method::GET,
            "/api/tenants/%61cme/orders",
            Some("bob-key"),
        )
        .await,
        "/api/tenants/acme/orders",
    );
    (call(
        &gw,
        Method::GET,
        "/api/tenants/%67lobex/orders",
        Some("bob-key"),
    )
    .await)
        .assert_refused(StatusCode::FORBIDDEN, "forbidden");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_could_escape_a_pattern_never_reach_another_tenant() {
    let (gw, _echo) = gateway().await;

    // The gateway resolves dot segments and double slashes before routing,
    // so rbac judges the path the upstream will get: another tenant's.
    for path in [
        "/api/tenants/acme/../globex/orders",
        "/api/tenants/acme/%2e%2e/globex/orders",
        "/api/tenants//globex/orders",
    ] {
        let reply = call(&gw, Method::GET, path, Some("bob-key")).await;
        reply.assert_refused(StatusCode::FORBIDDEN, "forbidden");
    }
    // Encoded slashes, bad escapes and dot segments with parameters
    // (`..;`, which Tomcat and Spring read as `..`) never get past the
    // gateway: refused before any plugin (rbac has its own check too).
    for path in [
        "/api/tenants/acme%2F..%2Fglobex/orders",
        "/api/tenants/acme/%zz",
        "/api/tenants/acme/..;/globex/orders",
    ] {
        let reply = call(&gw, Method::GET, path, Some("bob-key")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.header("x-upstream"), None, "{path}");
    }
    // A harmless `.` is the same resource.
    assert_passed(
        &call(
            &gw,
            Method::GET,
            "/api/tenants/acme/./orders",
            Some("bob-key"),
        )
        .await,
        "/api/tenants/acme/orders",
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_take_precedence() {
    let (gw, _echo) = gateway().await;

    let audit = "/api/audit/2025";
    assert_passed(
        &call(&gw, Method::GET, audit, Some("alice-key")).await,
        audit,
    );
    for path in [audit, "/api/audit", "/api/%61udit/2025", "/api/audit/2025/"] {
        (call(&gw, Method::DELETE, path, Some("alice-key")).await)
            .assert_refused(StatusCode::FORBIDDEN, "forbidden");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_an_identity_get_401_unless_a_rule_admits_them() {
    let (gw, _echo) = gateway().await;

    assert_passed(
        &call(&gw, Method::GET, "/open/health", None).await,
        "/open/health",
    );
    let refused = call(&gw, Method::GET, "/open/metrics", None).await;
    refused.assert_refused(StatusCode::UNAUTHORIZED, "authentication required");
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"ApiKey realm="open""#)
    );
    (call(&gw, Method::POST, "/open/health", None).await)
        .assert_refused(StatusCode::UNAUTHORIZED, "authentication required");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_refuses_the_configuration_naming_the_key() {
    let rules = r#"rules = [
    { roles = ["admin"], paths = ["/api/**"] },
    { roles = ["member"], paths = ["/api/{tenant}/**", "/api/**/x"] },
]"#;
    assert_config_refused(
        &route("api", "/api", &[("rbac", rules)]),
        PLUGINS,
        &[
            "route `api` plugin `rbac`: rejected its configuration",
            "rules[1].paths[1]: `/api/**/x`: `**` may only be the last segment",
        ],
    )
    .await;
}
