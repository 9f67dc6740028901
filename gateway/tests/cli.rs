//! The `portcullis` binary itself: a bad config fails before any port is
//! bound, SIGHUP reloads the config, SIGTERM drains requests in flight.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// An upstream answering `200 ok` to everything, after 600 ms on `/slow`.
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    addr
}

fn answer(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    if String::from_utf8_lossy(&head).starts_with("GET /slow") {
        std::thread::sleep(Duration::from_millis(600));
    }
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
}

/// Sends `GET path` and returns the status code.
fn get(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn config(dir: &std::path::Path, upstream: SocketAddr, extra_route: bool) {
    let mut text = format!(
        r#"
state_directory = "state"
[[listeners]]
address = "127.0.0.1:0"
[plugins]
directory = "plugins"
watch = false
[limits]
max_instances = 8
[upstreams.up]
servers = ["{upstream}"]
[[routes]]
name = "main"
path_prefix = "/slow"
upstream = "up"
"#
    );
    if extra_route {
        text.push_str("[[routes]]\nname = \"new\"\npath_prefix = \"/new\"\nupstream = \"up\"\n");
    }
    std::fs::write(dir.join("portcullis.toml"), text).expect("write config");
}

/// Starts `portcullis run` and waits for its listening address (from the
/// JSON log on stderr).
fn run(dir: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["run", "--log-format", "json", "--config"])
        .arg(dir.join("portcullis.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["message"] == "listening"
                && let Some(addr) = json["addr"].as_str().and_then(|a| a.parse().ok())
            {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the gateway logs its address");
    (child, addr)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn a_bad_config_exits_non_zero_with_every_problem_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let text = format!(
        "[[listeners]]\naddress = \"{}\"\n[plugins]\ndirectory = \"plugins\"\n[[routes]]\nname = \"r\"\npath_prefix = \"x\"\nupstream = \"nope\"\n",
        busy.local_addr().expect("addr")
    );
    std::fs::write(dir.path().join("bad.toml"), text).expect("write");
    for command in ["run", "check"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(dir.path().join("bad.toml"))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("routes[0].path_prefix: must start with `/`"),
            "{stderr}"
        );
        assert!(
            stderr.contains("routes[0].upstream: unknown upstream `nope`"),
            "{stderr}"
        );
        // Validation fails before the gateway tries the (busy) port.
        assert!(!stderr.contains("cannot listen"), "{stderr}");
    }
}

#[test]
fn help_explains_the_flags() {
    let out = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config <FILE>"), "{help}");
    assert!(help.contains("--log-format <FORMAT>"), "{help}");
}

#[test]
fn sighup_reloads_the_config_and_sigterm_drains_requests_in_flight() {
    let up = upstream();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
    config(dir.path(), up, false);
    let (mut child, addr) = run(dir.path());
    assert_eq!(get(addr, "/new"), 404);

    // The watcher is off: only SIGHUP reloads.
    config(dir.path(), up, true);
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(addr, "/new") != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the config"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The audit trail says what did it, and what changed.
    let trail = std::fs::read_to_string(dir.path().join("state").join("audit.jsonl"))
        .expect("an audit trail");
    let last: serde_json::Value =
        serde_json::from_str(trail.lines().last().expect("a record")).expect("JSON");
    assert_eq!(last["cause"]["kind"], "signal", "{last}");
    assert_eq!(
        last["config_changes"],
        serde_json::json!(["routes.new (added)"])
    );

    // A request in flight when SIGTERM arrives still completes.
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "TERM");
    assert_eq!(slow.join().expect("request thread"), 200);
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status}");
}

#[test]
fn keygen_and_sign_make_files_the_gateway_and_openssl_accept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("release");
    let made = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(made.status.success(), "{made:?}");
    let said = String::from_utf8_lossy(&made.stdout).to_string();
    let key = portcullis::signing::SigningKey::load(&dir.path().join("release.key"))
        .expect("a private key");
    let public = portcullis::signing::TrustedKey::load(&dir.path().join("release.pub"))
        .expect("a public key");
    assert_eq!(key.id, public.id);
    assert!(said.contains(&key.id), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("release.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never over an existing key.
    let again = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    // Any bytes will do as a module here: signing reads no more than its
    // SHA-256 and stamp.
    let module = dir.path().join("key_auth.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").expect("module");
    let signed = Command::new(BIN)
        .args(["sign", "--key"])
        .arg(dir.path().join("release.key"))
        .arg(&module)
        .output()
        .expect("runs");
    assert!(signed.status.success(), "{signed:?}");
    let sha = portcullis::plugin::engine::content_hash(b"\0asm\x01\0\0\0");
    assert_eq!(
        portcullis::signing::verify(&module, "key_auth", "", &sha, std::slice::from_ref(&public)),
        Ok(public.id.clone())
    );
    // A file name that is no plugin name needs --name.
    let odd = dir.path().join("Odd.wasm");
    std::fs::write(&odd, b"\0asm\x01\0\0\0").expect("module");
    let refused = Command::new(BIN)
        .args(["sign", "--key"])
        .arg(dir.path().join("release.key"))
        .arg(&odd)
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--name"));

    // OpenSSL reads the private key and derives the same public key.
    if let Ok(openssl) = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.path().join("release.key"))
        .output()
        && openssl.status.success()
    {
        let derived = String::from_utf8_lossy(&openssl.stdout).to_string();
        assert_eq!(derived, public.to_pem());
    }
}

#[test]
fn audit_verify_checks_the_chain_and_names_the_first_broken_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("audit.jsonl");
    let log = portcullis::audit::AuditLog::open(&file).expect("opens");
    for generation in 1..=3 {
        log.append(serde_json::json!({ "result": "applied", "generation": generation }));
    }
    drop(log);
    let verify = || {
        Command::new(BIN)
            .args(["audit", "verify", "--file"])
            .arg(&file)
            .output()
            .expect("runs")
    };
    let intact = verify();
    assert!(intact.status.success(), "{intact:?}");
    assert!(String::from_utf8_lossy(&intact.stdout).contains("3 records, chain intact"));
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replacen("\"generation\":2", "\"generation\":7", 1),
    )
    .expect("write");
    let broken = verify();
    assert!(!broken.status.success());
    let said = String::from_utf8_lossy(&broken.stderr).to_string();
    assert!(said.contains("record 2 (line 2)"), "{said}");
}

#[test]
fn test_runs_cases_offline_and_exits_by_their_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
    // An upstream nobody listens on: the cases never reach it.
    let nowhere = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("addr");
    config(dir.path(), nowhere, false);
    let cases = dir.path().join("cases.toml");
    let test = |text: &str| {
        std::fs::write(&cases, text).expect("write cases");
        let out = Command::new(BIN)
            .args(["test", "--config"])
            .arg(dir.path().join("portcullis.toml"))
            .arg(&cases)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, _) = test(
        r#"
[[case]]
name = "routed"
request = { method = "POST", path = "/slow/x", body = "hello" }
upstream = { status = 202, body = "queued" }
expect = { status = 202, body = "queued", upstream = { path = "/slow/x", body = "hello", headers = { content-length = "5" } } }
[[case]]
name = "no route"
request = { path = "/elsewhere" }
expect = { status = 404, upstream = false }
"#,
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ok     1 routed (202)"), "{stdout}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");

    let (code, stdout, _) = test(
        "[[case]]\nname = \"wrong\"\nrequest = { path = \"/elsewhere\" }\nexpect = { status = 200 }\n",
    );
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL   1 wrong (404)"), "{stdout}");
    assert!(stdout.contains("status: expected 200, got 404"), "{stdout}");

    let (code, stdout, stderr) = test("[[case]]\nname = \"no request\"\n");
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stderr.contains("missing field `request`"), "{stderr}");
}

/// Runs `cargo` in `dir` with the given arguments; panics with its output
/// if it fails.
fn cargo(dir: &std::path::Path, target: &std::path::Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn new_makes_a_plugin_crate_that_builds_and_passes_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["new", "client-gate", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(plugin client_gate)"), "{stdout}");
    let crate_dir = dir.path().join("client-gate");

    // The workspace's lock file pins the dependencies to the versions this
    // tree builds with, and its own target directory keeps a second run
    // incremental; the commands are the ones the scaffold's README gives.
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(workspace.join("Cargo.lock"), crate_dir.join("Cargo.lock")).expect("lock");
    let target = workspace.join("target").join("scaffold");
    cargo(&crate_dir, &target, &["fmt", "--check"]);
    cargo(&crate_dir, &target, &["test"]);
    cargo(
        &crate_dir,
        &target,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    // Where the scaffold's portcullis.toml looks for the module.
    let plugins = crate_dir.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(
        target.join("wasm32-wasip2/release/client_gate.wasm"),
        plugins.join("client_gate.wasm"),
    )
    .expect("module");

    let out = Command::new(BIN)
        .args(["test", "--config", "portcullis.toml", "cases.toml"])
        .current_dir(&crate_dir)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");

    // The module serves, with a canary of another config of it, steered
    // from the command line through the admin API.
    let admin_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let text = std::fs::read_to_string(crate_dir.join("portcullis.toml")).expect("config");
    let text = text.replace("127.0.0.1:8080", "127.0.0.1:0")
        + &format!(
            "[routes.plugins.canary]\nconfig = {{ deny = [\"mobile-app\"] }}\nsteps = [50]\n\
             sticky = \"header:x-client-id\"\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\n"
        );
    std::fs::write(crate_dir.join("portcullis.toml"), text).expect("config");
    // Killed if an assertion fails first (it holds the test's output).
    struct Running(Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let gateway = Running(run(&crate_dir).0);
    let rollout = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("rollout")
            .args(args)
            .current_dir(&crate_dir)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, said) = rollout(&["status"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(
            "app/client_gate: candidate client_gate running, 50% of requests (step 1 of 1)"
        ),
        "{said}"
    );
    let (code, said) = rollout(&["pause", "--route", "app", "--plugin", "client_gate"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("client_gate paused"), "{said}");
    let (code, said) = rollout(&["abort", "--route", "app", "--plugin", "client_gate"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("client_gate aborted, 0% of requests"),
        "{said}"
    );
    let (code, said) = rollout(&["abort", "--route", "app", "--plugin", "client_gate"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("409 Conflict: the rollout has ended (aborted)"),
        "{said}"
    );
    let (code, said) = rollout(&["promote"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("needs --route and --plugin"), "{said}");
    drop(gateway);

    let out = Command::new(BIN)
        .args(["new", "client-gate", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
