//! Resident memory of the gateway process (the release `portcullis`
//! binary, run as a child process so that nothing of the bench counts)
//! with 0, 1 and 9 plugins, measured as `VmRSS` from `/proc`:
//! * `empty`: no plugin module, one route without plugins;
//! * `1 used`: `key_auth` on one route;
//! * `9 unused`: the nine policy plugins in the directory, no route using
//!   them (validated, not compiled);
//! * `9 used`: the example config (`examples/portcullis.toml`), 13 routes.
//!
//! Each case starts cold (empty module cache), waits for the optimized
//! builds, sends the README's requests (every plugin used runs), and reads
//! RSS; then it restarts on the warm cache and reads it again after the
//! same requests. Linux only (`/proc`).
//!
//! Run: `cargo bench -p portcullis-tests --bench memory`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::Method;
use portcullis_tests::echo::Echo;
use portcullis_tests::tls::TestCa;
use portcullis_tests::{Client, POLICY_PLUGINS, TestGateway, base_config, route};

/// One configuration to measure.
struct Case {
    name: &'static str,
    config: String,
    plugins: &'static [(&'static str, &'static str)],
    /// How many modules its routes use (optimized builds to wait for).
    used: usize,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the release binary (a no-op when the bench build made it).
fn gateway_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "portcullis",
            "--bin",
            "portcullis",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the gateway builds");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    target.join("release").join("portcullis")
}

/// A running gateway process, and what its log has said so far.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn start(binary: &Path, dir: &Path) -> Self {
        let mut child = Command::new(binary)
            .args(["run", "--log-format", "text", "-c"])
            .arg(dir.join("portcullis.toml"))
            .env("RUST_LOG", "info,portcullis::access=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway starts");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (60 s at most) until `count` log lines contain `text`.
    fn wait_for(&mut self, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.iter().filter(|l| l.contains(text)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no {count} lines with `{text}`; log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn address(&self) -> String {
        let line = self
            .seen
            .iter()
            .find(|l| l.contains("listening"))
            .expect("listening");
        let at = line.find("addr=").expect("addr") + 5;
        line[at..]
            .split_whitespace()
            .next()
            .expect("address")
            .to_owned()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's requests: every plugin of the example config runs.
async fn traffic(address: &str) {
    let examples = workspace().join("examples");
    let token = |name: &str| {
        let text = std::fs::read_to_string(examples.join("keys").join(name)).expect("token");
        format!("Bearer {}", text.trim())
    };
    let (partner, viewer) = (token("partner.jwt"), token("viewer.jwt"));
    let key = [("x-api-key", "demo-key")];
    let client = Client::new();
    let url = |path: &str| format!("http://{address}{path}");
    for _ in 0..3 {
        for (path, headers) in [
            ("/hello", &[][..]),
            ("/api/me", &key[..]),
            ("/api/tenants/acme/orders?debug=1", &key[..]),
            (
                "/partners/orders",
                &[("authorization", partner.as_str())][..],
            ),
            (
                "/partners/orders",
                &[("authorization", viewer.as_str())][..],
            ),
            ("/catalog/v1/items", &[][..]),
            (
                "/user/login",
                &[("authorization", "Basic YWxpY2U6b3Blbi1zZXNhbWU=")][..],
            ),
        ] {
            client.get(&url(path), headers).await.expect("reply");
        }
        client
            .request(
                Method::POST,
                &url("/api/tenants/acme/reflect"),
                &[
                    ("x-api-key", "demo-key"),
                    ("content-type", "application/json"),
                ],
                r#"{"card":"4111 1111 1111 1111","email":"jane@example.com"}"#,
            )
            .await
            .expect("reply");
    }
}

/// Starts the gateway on `dir` cold, then warm; RSS after traffic each time.
async fn measure(binary: &Path, dir: &Path, used: usize) -> (u64, u64) {
    let mut rss = Vec::new();
    for start in ["cold", "warm"] {
        let mut gateway = Process::start(binary, dir);
        gateway.wait_for("listening", 1);
        if start == "cold" {
            gateway.wait_for("optimized build loaded", used);
        }
        traffic(&gateway.address()).await;
        // Let the post-load trim and the pools settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss.push(gateway.rss_kib());
    }
    (rss[0], rss[1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let binary = gateway_binary();
    let echo = Echo::start_local().await.expect("echo starts");
    let plain = format!(
        "{}{}",
        base_config(echo.addr),
        route("hello", "/hello", &[])
    );
    // Its own state directory, so that the cold start is cold.
    let example = std::fs::read_to_string(workspace().join("examples/portcullis.toml"))
        .map(|text| format!("state_directory = \"state\"\n{text}"))
        .expect("example config")
        .replace(
            r#"address = "127.0.0.1:8080""#,
            r#"address = "127.0.0.1:0""#,
        )
        .replace(
            r#"address = "127.0.0.1:8443""#,
            r#"address = "127.0.0.1:0""#,
        )
        .replace(
            r#"servers = ["127.0.0.1:9000"]"#,
            &format!(r#"servers = ["{}"]"#, echo.addr),
        );
    let one = format!(
        "{plain}{}",
        route(
            "api",
            "/api",
            &[(
                "key_auth",
                r#"keys = [{ consumer = "c", key = "demo-key" }]"#
            )]
        )
    );
    let cases = [
        Case {
            name: "empty",
            config: plain.clone(),
            plugins: &[],
            used: 0,
        },
        Case {
            name: "1 used (key_auth)",
            config: one,
            plugins: &POLICY_PLUGINS[1..2],
            used: 1,
        },
        Case {
            name: "9 unused",
            config: plain,
            plugins: &POLICY_PLUGINS,
            used: 0,
        },
        Case {
            name: "9 used (example config)",
            config: example,
            plugins: &POLICY_PLUGINS,
            used: 9,
        },
    ];
    let mut results = Vec::new();
    for case in cases {
        let dir = TestGateway::prepare(&case.config, case.plugins).expect("prepare");
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).expect("keys dir");
        for file in ["jwks.json", "users.htpasswd"] {
            std::fs::copy(
                workspace().join("examples/keys").join(file),
                keys.join(file),
            )
            .expect("copy key file");
        }
        // The example's HTTPS listener needs the demo certificate.
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("certs dir");
        TestCa::new()
            .issue(&["localhost"], -1, 30)
            .write(&certs, "localhost")
            .expect("certificate");
        results.push((case.name, measure(&binary, dir.path(), case.used).await));
    }
    println!("resident memory (VmRSS) after the README's requests");
    println!("{:<26} {:>10} {:>10}", "case", "cold", "warm");
    for (name, (cold, warm)) in results {
        println!(
            "{name:<26} {:>6.1} MiB {:>6.1} MiB",
            cold as f64 / 1024.0,
            warm as f64 / 1024.0
        );
    }
}
