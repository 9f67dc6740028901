//! Signed modules end to end: with `[signatures] required`, a module is
//! loaded only with a valid signature from a trusted key; anything else is
//! refused (logged, alerted, in the history) while the old version keeps
//! serving; a module may come before its signature, and waits for it.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use portcullis::registry::{Outcome, Trigger};
use portcullis::signing::SigningKey;
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, next_event, route};

/// How long a test waits for a reload it caused (a bound, not a measure).
const BOUND: Duration = Duration::from_secs(20);

fn config(echo: &Echo, wait_ms: u64) -> String {
    format!(
        r#"{}
[signatures]
required = true
trusted_keys = ["ci.pub"]
wait_ms = {wait_ms}
{}"#,
        base_config(echo.addr),
        route("stamped", "/", &[("stamp", "")])
    )
}

/// Signs `module` (bytes) as plugin `name` with `key`, as `portcullis
/// sign` does.
fn signature(key: &SigningKey, name: &str, module: &[u8]) -> String {
    let version = portcullis::plugin::stamp::read(module)
        .map(|s| s.version)
        .unwrap_or_default();
    key.sign(
        name,
        &version,
        &portcullis::plugin::engine::content_hash(module),
    )
}

/// The next reload of the `stamp` module.
async fn next_stamp_event(
    events: &mut tokio::sync::broadcast::Receiver<portcullis::registry::ReloadEvent>,
) -> portcullis::registry::ReloadEvent {
    next_event(events, &Trigger::Plugin("stamp".into()), BOUND)
        .await
        .expect("a reload event")
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A gateway whose `stamp` v1 is signed by `key`, the trusted key.
async fn start(wait_ms: u64) -> (TestGateway, Echo, SigningKey) {
    let echo = Echo::start_local().await.expect("echo");
    let (key, _) = SigningKey::generate().expect("key");
    let dir = TestGateway::prepare(&config(&echo, wait_ms), &[("stamp", fixtures::STAMP_V1)])
        .expect("prepared");
    write(&dir.path().join("ci.pub"), &key.public().to_pem());
    let v1 = std::fs::read(fixtures::STAMP_V1).expect("fixture");
    write(
        &dir.path().join("plugins/stamp.wasm.sig"),
        &signature(&key, "stamp", &v1),
    );
    let gw = TestGateway::start_in(dir).await.expect("starts");
    (gw, echo, key)
}

async fn stamp(gw: &TestGateway) -> String {
    let reply = Client::new()
        .get(&gw.url("/x"), &[])
        .await
        .expect("response");
    assert_eq!(reply.status, StatusCode::OK);
    reply.header("x-stamp").unwrap_or("-").to_owned()
}

fn signer(gw: &TestGateway) -> Option<String> {
    gw.handle
        .registry()
        .module_infos()
        .into_iter()
        .find(|m| m.name == "stamp")
        .and_then(|m| m.signer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_tampered_and_untrusted_modules_are_refused_while_v1_serves() {
    let (gw, _echo, key) = start(0).await;
    assert_eq!(stamp(&gw).await, "v1");
    assert_eq!(signer(&gw), Some(key.id.clone()));
    let v1 = std::fs::read(fixtures::STAMP_V1).expect("fixture");
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    let sig_path = gw.plugin_dir().join("stamp.wasm.sig");
    let (stranger, _) = SigningKey::generate().expect("key");
    // Each attempt: v2 with a signature that does not hold for it.
    let attempts: Vec<(&str, Option<String>)> = vec![
        ("no signature", None),
        ("the signature of v1", Some(signature(&key, "stamp", &v1))),
        (
            "signed for another plugin",
            Some(signature(&key, "key_auth", &v2)),
        ),
        ("an untrusted key", Some(signature(&stranger, "stamp", &v2))),
    ];
    for (what, sig) in attempts {
        let mut events = gw.events();
        match &sig {
            Some(text) => write(&sig_path, text),
            None => std::fs::remove_file(&sig_path).expect("remove the signature"),
        }
        gw.install("stamp", &v2).expect("install v2");
        let event = next_stamp_event(&mut events).await;
        let Outcome::Rejected { reason } = &event.outcome else {
            panic!("{what}: {event:?}");
        };
        println!("{what}: {reason}");
        assert_eq!(stamp(&gw).await, "v1", "{what}: v1 keeps serving");
        // Put v1 back, signed, for the next attempt.
        write(&sig_path, &signature(&key, "stamp", &v1));
        gw.install("stamp", &v1).expect("reinstall v1");
        let mut settled = gw.events();
        let _ = next_event(
            &mut settled,
            &Trigger::Plugin("stamp".into()),
            Duration::from_millis(500),
        )
        .await;
    }
    // Each refusal is in the history and raised a critical alert.
    let refused = gw
        .handle
        .registry()
        .history()
        .into_iter()
        .filter(|h| matches!(h.event.outcome, Outcome::Rejected { .. }))
        .count();
    assert_eq!(refused, 4);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let alerts: Vec<_> = gw
            .handle
            .recent_alerts()
            .into_iter()
            .filter(|a| a.kind == "module-refused" && a.plugin == "stamp")
            .collect();
        if alerts.len() == 4 {
            assert!(alerts.iter().all(|a| a.label("sha256").is_some()));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{alerts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Signed properly, v2 goes live, with its signer shown.
    let mut events = gw.events();
    write(&sig_path, &signature(&key, "stamp", &v2));
    gw.install("stamp", &v2).expect("install v2");
    let event = next_stamp_event(&mut events).await;
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );
    assert_eq!(stamp(&gw).await, "v2");
    assert_eq!(signer(&gw), Some(key.id.clone()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_waits_for_its_signature_and_goes_live_when_it_comes() {
    let (gw, _echo, key) = start(60_000).await;
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    let mut events = gw.events();
    // The module first: it waits, v1 serves.
    gw.install("stamp", &v2).expect("install v2");
    let event = next_stamp_event(&mut events).await;
    assert!(
        matches!(event.outcome, Outcome::Waiting { .. }),
        "{event:?}"
    );
    assert_eq!(stamp(&gw).await, "v1");
    // Then its signature: v2 goes live.
    write(
        &gw.plugin_dir().join("stamp.wasm.sig"),
        &signature(&key, "stamp", &v2),
    );
    let event = next_stamp_event(&mut events).await;
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );
    assert_eq!(stamp(&gw).await, "v2");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_that_never_comes_gets_the_module_refused() {
    let (gw, _echo, _key) = start(300).await;
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    let mut events = gw.events();
    std::fs::remove_file(gw.plugin_dir().join("stamp.wasm.sig")).expect("remove");
    gw.install("stamp", &v2).expect("install v2");
    let trigger = Trigger::Plugin("stamp".into());
    let first = next_event(&mut events, &trigger, BOUND)
        .await
        .expect("event");
    assert!(
        matches!(first.outcome, Outcome::Waiting { .. }),
        "{first:?}"
    );
    // The gateway checks again when the wait is over, by itself.
    let second = next_event(&mut events, &trigger, BOUND)
        .await
        .expect("event");
    let Outcome::Rejected { reason } = &second.outcome else {
        panic!("{second:?}");
    };
    assert!(reason.contains("signatures.wait_ms"), "{reason}");
    assert_eq!(stamp(&gw).await, "v1");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_signature_the_gateway_does_not_start() {
    let echo = Echo::start_local().await.expect("echo");
    let (key, _) = SigningKey::generate().expect("key");
    let dir = TestGateway::prepare(&config(&echo, 0), &[("stamp", fixtures::STAMP_V1)])
        .expect("prepared");
    write(&dir.path().join("ci.pub"), &key.public().to_pem());
    let err = TestGateway::start_in(dir)
        .await
        .expect_err("refused without a signature");
    let text = format!("{err:#}");
    assert!(
        text.contains("plugin `stamp`") && text.contains("no signature"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiring_signatures_by_reload_checks_the_modules_already_loaded() {
    let echo = Echo::start_local().await.expect("echo");
    let unsigned = config(&echo, 0).replace("required = true", "required = false");
    let (key, _) = SigningKey::generate().expect("key");
    let dir = TestGateway::prepare(&unsigned, &[("stamp", fixtures::STAMP_V1)]).expect("prepared");
    write(&dir.path().join("ci.pub"), &key.public().to_pem());
    let gw = TestGateway::start_in(dir).await.expect("starts unsigned");
    assert_eq!(signer(&gw), None);
    // Now required: v1, loaded unsigned, has no signature, so the new
    // config is refused and the old one keeps serving.
    let config_path = gw.dir().join("portcullis.toml");
    write(&config_path, &config(&echo, 0));
    let event = gw.handle.reload_config().await.expect("reload runs");
    let Outcome::Rejected { reason } = &event.outcome else {
        panic!("{event:?}");
    };
    assert!(
        reason.contains("plugin `stamp`") && reason.contains("no signature"),
        "{reason}"
    );
    assert_eq!(stamp(&gw).await, "v1");
    // Signed, the same config goes live, and the signer is shown.
    let v1 = std::fs::read(fixtures::STAMP_V1).expect("fixture");
    write(
        &gw.plugin_dir().join("stamp.wasm.sig"),
        &signature(&key, "stamp", &v1),
    );
    let event = gw.handle.reload_config().await.expect("reload runs");
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );
    assert_eq!(signer(&gw), Some(key.id.clone()));
    gw.stop().await;
}
