//! `portcullis test`: the example's own cases pass against the example
//! config and the real plugins, offline; a case that expects what the
//! policy does not do fails with what differed; a bad case file is
//! refused with the case and the key named.

use std::path::Path;

use portcullis::cases;
use portcullis_tests::{POLICY_PLUGINS, TestGateway};

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

/// The example config and its key files in a directory of the test's
/// own, with the plugins built from this tree (unsigned: `portcullis
/// test` checks policy, not signatures).
fn example_dir() -> tempfile::TempDir {
    let text = std::fs::read_to_string(examples().join("portcullis.toml")).expect("example config");
    let text = format!("state_directory = \"state\"\n{text}");
    let dir = TestGateway::prepare(&text, &POLICY_PLUGINS).expect("prepare");
    std::fs::create_dir(dir.path().join("keys")).expect("keys dir");
    for file in ["jwks.json", "users.htpasswd"] {
        std::fs::copy(
            examples().join("keys").join(file),
            dir.path().join("keys").join(file),
        )
        .expect("copy key file");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_own_cases_pass() {
    let dir = example_dir();
    let report = cases::run(
        &dir.path().join("portcullis.toml"),
        &examples().join("cases.toml"),
    )
    .await
    .expect("cases run");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(report.cases.len() >= 15, "{report}");
    // Nothing of the run is left where the gateway would keep it.
    assert!(!dir.path().join("state").join("audit.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_the_policy_does_not_meet_fails_with_what_differed() {
    let dir = example_dir();
    let file = dir.path().join("cases.toml");
    std::fs::write(
        &file,
        r#"
[[case]]
name = "expects a key to be enough for another tenant"
request = { path = "/api/tenants/globex/x", headers = { x-api-key = "demo-key" } }
expect = { status = 200, upstream = true }

[[case]]
name = "expects the key to reach the upstream"
request = { path = "/api/me", headers = { x-api-key = "demo-key" }, time = 2026-12-01T10:00:00Z }
upstream = { status = 201, headers = { x-served-by = "stand-in", content-type = "text/plain" }, body = "mail jane@example.com" }
[case.expect]
status = 201
headers = { x-served-by = "stand-in", cache-control = "public" }
absent_headers = ["ratelimit"]
body = "mail jane@example.com"
upstream = { method = "POST", path = "/api/me?x=1", headers = { x-api-key = "demo-key" }, absent_headers = ["x-gateway"] }

[[case]]
name = "expects a refusal that comes"
request = { path = "/api/me", client = "203.0.113.9" }
expect = { status = 401, upstream = false, headers = { www-authenticate = 'ApiKey realm="portcullis"' } }
"#,
    )
    .expect("write cases");
    let report = cases::run(&dir.path().join("portcullis.toml"), &file)
        .await
        .expect("cases run");
    assert_eq!(report.failed(), 2, "{report}");
    let first = &report.cases[0];
    assert_eq!(first.status, Some(403));
    assert_eq!(
        first.failures,
        [
            "status: expected 200, got 403",
            "upstream: expected a request, got none"
        ]
    );
    let second = &report.cases[1];
    assert_eq!(second.status, Some(201));
    assert_eq!(
        second.failures,
        [
            "header cache-control: expected `public`, got `no-store`",
            "header ratelimit: expected none, got `\"per-second\";r=4;t=1, \"daily\";r=999;t=50400`",
            "body: expected `mail jane@example.com`, got `mail j***@example.com`",
            "upstream method: expected POST, got GET",
            "upstream path: expected `/api/me?x=1`, got `/api/me`",
            "upstream header x-api-key: expected `demo-key`, got none",
            "upstream header x-gateway: expected none, got `portcullis`",
        ]
    );
    assert!(report.cases[2].failures.is_empty(), "{report}");
    let printed = report.to_string();
    assert!(
        printed.contains("FAIL   1 expects a key to be enough"),
        "{printed}"
    );
    assert!(
        printed.contains("ok     3 expects a refusal that comes (401)"),
        "{printed}"
    );
    assert!(printed.contains("1 passed, 2 failed"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_case_file_is_refused_naming_case_and_key() {
    let dir = example_dir();
    let file = dir.path().join("cases.toml");
    std::fs::write(
        &file,
        r#"
[[case]]
name = "fine"
request = { path = "/hello" }

[[case]]
name = "broken"
request = { method = "G ET", path = "hello", headers = { "bad name" = "x" }, time = "yesterday" }
upstream = { status = 1000 }
expect = { absent_headers = ["no good"] }
"#,
    )
    .expect("write cases");
    let error = cases::run(&dir.path().join("portcullis.toml"), &file)
        .await
        .expect_err("a bad case file");
    let message = error.to_string();
    for expected in [
        "case[1] (broken): request.method: `G ET` is not a method",
        "case[1] (broken): request.path: `hello` must start with `/`",
        "case[1] (broken): request.headers: `bad name` is not a header name",
        "case[1] (broken): request.time: `yesterday`",
        "case[1] (broken): upstream.status: 1000 is not a status code",
        "case[1] (broken): expect.absent_headers: `no good` is not a header name",
    ] {
        assert!(message.contains(expected), "{expected} in {message}");
    }
    assert!(!message.contains("case[0]"), "{message}");

    std::fs::write(
        &file,
        "[[case]]\nname = \"x\"\nrequest = { path = \"/\" }\nexpect = { stauts = 200 }\n",
    )
    .expect("write cases");
    let error = cases::run(&dir.path().join("portcullis.toml"), &file)
        .await
        .expect_err("an unknown key");
    assert!(
        error.to_string().contains("unknown field `stauts`"),
        "{error}"
    );
}
