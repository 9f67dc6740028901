//! The audit trail end to end: each policy change is one hash-chained
//! JSON line (what changed, what caused it, how it ended, who signed the
//! module), readable through `GET /audit`, checked by `verify`, and no
//! configured secret is written to it.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portcullis::registry::{Outcome, Trigger};
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, next_event, route};
use serde_json::Value;

const TOKEN: &str = "audit-admin-token-0123456789";
const FIRST_KEY: &str = "first-secret-api-key-1234";
const SECOND_KEY: &str = "second-secret-api-key-5678";

fn config(echo: &Echo, key: &str) -> String {
    format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{}{}",
        base_config(echo.addr),
        route(
            "keyed",
            "/keyed",
            &[(
                "key_auth",
                &format!("keys = [{{ consumer = \"alice\", key = \"{key}\" }}]")
            )]
        ),
        route("stamped", "/stamped", &[("stamp", "")]),
    )
}

async fn admin(gw: &TestGateway, method: Method, path: &str) -> (StatusCode, Value) {
    let addr = gw.handle.admin_addr().expect("admin");
    let reply = Client::new()
        .request(
            method,
            &format!("http://{addr}{path}"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            Bytes::new(),
        )
        .await
        .expect("admin answers");
    (
        reply.status,
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_is_one_chained_record_without_secrets() {
    let echo = Echo::start_local().await.expect("echo");
    let gw = TestGateway::start(
        &config(&echo, FIRST_KEY),
        &[
            ("key_auth", fixtures::KEY_AUTH),
            ("stamp", fixtures::STAMP_V1),
        ],
    )
    .await
    .expect("starts");
    let file = gw
        .handle
        .registry()
        .audit_file()
        .expect("an audit trail by default")
        .to_owned();
    assert!(file.starts_with(gw.dir()), "{}", file.display());

    // A module replaced, and one refused.
    let mut events = gw.events();
    let trigger = Trigger::Plugin("stamp".into());
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    gw.install("stamp", &v2).expect("install");
    let event = next_event(&mut events, &trigger, Duration::from_secs(20))
        .await
        .expect("event");
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );
    gw.install("stamp", b"not a module").expect("install");
    let event = next_event(&mut events, &trigger, Duration::from_secs(20))
        .await
        .expect("event");
    assert!(
        matches!(event.outcome, Outcome::Rejected { .. }),
        "{event:?}"
    );
    // A config change through the admin API.
    std::fs::write(gw.dir().join("portcullis.toml"), config(&echo, SECOND_KEY)).expect("write");
    let (status, _) = admin(&gw, Method::POST, "/reload").await;
    assert_eq!(status, StatusCode::OK);

    // Through the API, a page at a time.
    let (status, page) = admin(&gw, Method::GET, "/audit?after=0&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["more"], true);
    let (_, all) = admin(&gw, Method::GET, "/audit?limit=1000").await;
    let records = all["records"].as_array().expect("records").clone();
    let results: Vec<&str> = records
        .iter()
        .map(|r| r["result"].as_str().unwrap_or("?"))
        .collect();
    assert!(results.len() >= 4, "{results:?}");
    assert_eq!(records[0]["cause"]["kind"], "startup");
    assert_eq!(records[0]["result"], "applied");
    let module_record = records
        .iter()
        .find(|r| r["cause"]["kind"] == "plugin" && r["result"] == "applied")
        .expect("the module change");
    let change = &module_record["modules"][0];
    assert_eq!(change["name"], "stamp");
    assert_eq!(
        change["sha256"],
        portcullis::plugin::engine::content_hash(&v2)
    );
    assert!(change["previous"].is_string());
    assert!(change["version"].is_string(), "{change}");
    assert!(change["signer"].is_null());
    let refused = records
        .iter()
        .find(|r| r["result"] == "rejected")
        .expect("the refusal");
    assert!(refused["reason"].is_string());
    let reload = records
        .iter()
        .find(|r| r["cause"]["kind"] == "admin")
        .expect("the admin reload");
    assert_eq!(reload["result"], "applied");
    assert!(
        reload["cause"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("sha256:") && t.len() == 23)
    );
    assert_eq!(
        reload["config_changes"],
        serde_json::json!(["routes.keyed.plugins.key_auth.config.keys"])
    );
    let (status, _) = admin(&gw, Method::GET, "/audit?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // No secret in the file.
    let text = std::fs::read_to_string(&file).expect("read");
    for secret in [TOKEN, FIRST_KEY, SECOND_KEY] {
        assert!(!text.contains(secret), "{secret} in the audit trail");
    }
    // The chain holds; one changed byte breaks it where it was changed.
    let verified = portcullis::audit::verify(&file).expect("intact");
    // The watcher may reload the config file once more on its own (its
    // change was also seen there): the chain covers at least every record
    // read so far.
    assert!(
        verified.records >= records.len() as u64 && verified.records >= text.lines().count() as u64,
        "{} records verified, {} listed, {} read",
        verified.records,
        records.len(),
        text.lines().count()
    );
    let altered = text.replacen(
        "\"cause\":{\"kind\":\"plugin\"",
        "\"cause\":{\"kind\":\"config\"",
        1,
    );
    assert_ne!(altered, text);
    std::fs::write(&file, &altered).expect("write");
    let err = portcullis::audit::verify(&file).expect_err("broken");
    let altered_at = altered
        .lines()
        .position(|l| l.contains("\"cause\":{\"kind\":\"config\"") && !text.contains(l))
        .expect("the altered line")
        + 1;
    assert!(
        err.starts_with(&format!("record {altered_at} (line {altered_at})")),
        "{err}"
    );
    gw.stop().await;
}
