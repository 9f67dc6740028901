//! The dashboard in a real browser: Debian's headless Chromium driven
//! through chromedriver (WebDriver). The page must load without a console
//! error, show the routes and plugins after traffic, count new requests,
//! and show a refused module in the reload history. A screenshot is saved
//! as `target/dashboard.png`.
//!
//! Chromium and chromedriver are required, not optional: `scripts/test.sh`
//! installs them (`apt-get install chromium chromium-driver`, as root), and
//! without them this test fails with the command to run.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client as Browser, ClientBuilder};
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, route, sha256_hex};
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-token-0123456789";
const KEY: &str = "alice-secret";

/// The first of `names` found on `PATH` (or in `/usr/bin`, `/usr/lib/chromium`).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain([
        PathBuf::from("/usr/bin"),
        PathBuf::from("/usr/lib/chromium"),
    ]);
    let dirs: Vec<PathBuf> = dirs.collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// chromedriver on a free port of 127.0.0.1, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://{addr}"),
        }
    }
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log`), which the
/// W3C protocol has no equivalent of: the browser console's messages.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// What the page shows, read in one script.
const READ_PAGE: &str = r#"
const all = (sel, attr) => [...document.querySelectorAll(sel)].map(e => e.getAttribute(attr));
return {
  live: document.querySelector('#live')?.dataset.state ?? null,
  total: Number(document.querySelector('#total-requests')?.textContent ?? 'NaN'),
  routes: all('[data-route]', 'data-route'),
  plugins: all('[data-plugin]', 'data-plugin'),
  shadows: all('[data-shadow]', 'data-shadow'),
  rollouts: all('[data-rollout]', 'data-rollout'),
  history: [...document.querySelectorAll('#reload-history [data-result]')]
    .map(e => ({ result: e.dataset.result, text: e.textContent })),
  canvases: document.querySelectorAll('canvas').length,
};
"#;

async fn read_page(browser: &Browser) -> Value {
    browser
        .execute(READ_PAGE, vec![])
        .await
        .expect("the page can be read")
}

/// Reads the page until `ready` holds of what it shows (at most 30 s:
/// the page polls every 2 to 5 s); panics with the last reading.
async fn wait_until(browser: &Browser, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = read_page(browser).await;
        if ready(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed {what}; it shows {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_traffic_policies_and_reloads_in_a_real_browser() {
    let (Some(chromedriver), Some(chromium)) = (
        find_program(&["chromedriver"]),
        find_program(&["chromium", "chromium-browser"]),
    ) else {
        panic!(
            "the dashboard test needs Chromium and chromedriver; install them with\n    \
             sudo apt-get install -y chromium chromium-driver\n\
             (./scripts/test.sh does it when run as root)"
        );
    };

    let echo = Echo::start_local().await.expect("echo");
    let keys = format!(
        r#"keys = [{{ consumer = "alice", sha256 = "{}" }}]"#,
        sha256_hex(KEY.as_bytes())
    );
    let config = format!(
        "{base}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{keyed}{limited}",
        base = base_config(echo.addr),
        // A canary of the same config (as for a new build of the module),
        // for the rollouts panel.
        keyed = route(
            "keyed",
            "/keyed",
            &[(
                "key_auth",
                &format!("{keys}\n[routes.plugins.canary]\nsteps = [50]")
            )]
        ),
        // With a stricter candidate in shadow, for the shadow panel.
        limited = route(
            "limited",
            "/limited",
            &[(
                "rate_limit",
                r#"by = ["ip"]
limits = [{ quota = 3, per = "hour" }]
[routes.plugins.shadow]
config = { limits = [{ quota = 1, per = "hour" }] }"#
            )]
        ),
    );
    let gw = TestGateway::start(
        &config,
        &[
            ("key_auth", fixtures::KEY_AUTH),
            ("rate_limit", fixtures::RATE_LIMIT),
        ],
    )
    .await
    .expect("gateway starts");
    let admin = gw.handle.admin_addr().expect("admin listener");
    let client = Client::new();
    let traffic = |path: &'static str, key: Option<&'static str>| {
        let client = client.clone();
        let url = gw.url(path);
        async move {
            let headers: Vec<(&str, &str)> =
                key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
            client.get(&url, &headers).await.expect("response").status
        }
    };
    for _ in 0..3 {
        traffic("/keyed/a", Some(KEY)).await;
    }
    traffic("/keyed/a", None).await;
    for _ in 0..5 {
        traffic("/limited/b", None).await;
    }

    let driver = Driver::start(&chromedriver);
    let mut capabilities = Capabilities::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1440,1200",
            ],
        }),
    );
    capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session");

    let result = async {
        browser
            .goto(&format!("http://{admin}/#token={TOKEN}"))
            .await
            .expect("the page loads");
        let page = wait_until(&browser, "live data, routes and plugins", |p| {
            let has = |key: &str, name: &str| {
                p[key]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v == name))
            };
            p["live"] == "ok"
                && has("routes", "keyed")
                && has("routes", "limited")
                && has("plugins", "key_auth")
                && has("plugins", "rate_limit")
                && has("shadows", "limited/rate_limit")
                && has("rollouts", "keyed/key_auth")
                && p["total"].as_f64() >= Some(9.0)
        })
        .await;
        assert!(page["canvases"].as_u64() >= Some(2), "charts: {page:#}");
        let before = page["total"].as_f64().unwrap_or_default();

        // More requests: the count on the page rises by at least as many.
        for _ in 0..7 {
            traffic("/keyed/c", Some(KEY)).await;
        }
        wait_until(&browser, "the new requests", |p| {
            p["total"].as_f64() >= Some(before + 7.0)
        })
        .await;

        // A refused module appears in the reload history.
        gw.install("rate_limit", b"\0asm this is not a module")
            .expect("install");
        let page = wait_until(&browser, "the refused module", |p| {
            p["history"].as_array().is_some_and(|h| {
                h.iter().any(|e| {
                    e["result"] == "rejected"
                        && e["text"].as_str().is_some_and(|t| t.contains("rate_limit"))
                })
            })
        })
        .await;
        assert_eq!(page["live"], "ok");

        let png = browser.screenshot().await.expect("a screenshot");
        let path = target_dir().join("dashboard.png");
        std::fs::create_dir_all(target_dir()).expect("target dir");
        std::fs::write(&path, &png).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");

        // No console error at any point (the page ran for several polls).
        let log = browser
            .issue_cmd(BrowserLog)
            .await
            .expect("the console log");
        let entries = log.as_array().expect("log entries");
        let errors: Vec<&Value> = entries
            .iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }
    .await;
    let _ = browser.close().await;
    drop(driver);
    gw.stop().await;
    result
}
