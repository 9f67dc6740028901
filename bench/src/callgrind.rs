//! Instructions per request, counted by callgrind: unlike times they
//! repeat on a shared machine (two runs of the same binary agree within a
//! fraction of a percent), so they are the figure to compare between
//! commits.
//!
//! The proxy runs under `valgrind --tool=callgrind`; after a warm-up the
//! counters are zeroed (`callgrind_control -z`), a fixed number of requests
//! go over one keep-alive connection, one after another, and the counters
//! are dumped (`-d`). The dump's total divided by the requests is the
//! figure: it leaves out start-up and shutdown, and counts every thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cases::{self, Chain, KEY, Proxy};
use crate::procs::{self, Proc};
use crate::setup::{self, Env, PROXY_PORT};

/// Requests before the counters are zeroed.
const WARMUP: usize = 200;
/// Requests counted.
pub(crate) const REQUESTS: usize = 2000;

/// A case measured under callgrind.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// As reported.
    pub(crate) name: &'static str,
    /// The proxy.
    pub(crate) proxy: Proxy,
    /// The case it is compared with, by name.
    pub(crate) baseline: Option<&'static str>,
}

/// The cases: nginx and Portcullis without plugins, with key_auth, with the
/// four-plugin chain.
pub(crate) fn all(baseline: bool) -> Vec<Case> {
    let cases = vec![
        Case {
            name: "nginx proxy_pass",
            proxy: Proxy::Nginx,
            baseline: None,
        },
        Case {
            name: "portcullis, no plugins",
            proxy: Proxy::Portcullis(Chain::Empty),
            baseline: Some("nginx proxy_pass"),
        },
        Case {
            name: "portcullis, key_auth",
            proxy: Proxy::Portcullis(Chain::KeyAuth),
            baseline: Some("portcullis, no plugins"),
        },
        Case {
            name: "portcullis, four plugins",
            proxy: Proxy::Portcullis(Chain::Four),
            baseline: Some("portcullis, no plugins"),
        },
        // Every thread is counted: the shadow's figure includes the
        // candidate's own call, not only what the live request pays.
        Case {
            name: "portcullis, key_auth + shadow",
            proxy: Proxy::Portcullis(Chain::KeyAuthShadow),
            baseline: Some("portcullis, key_auth"),
        },
        Case {
            name: "portcullis, key_auth + canary",
            proxy: Proxy::Portcullis(Chain::KeyAuthCanary),
            baseline: Some("portcullis, key_auth"),
        },
    ];
    if !baseline {
        return cases;
    }
    cases
        .into_iter()
        .flat_map(|case| match case.proxy {
            // The baseline build has no shadows or canaries.
            Proxy::Portcullis(Chain::KeyAuthShadow | Chain::KeyAuthCanary) => vec![case],
            Proxy::Portcullis(chain) => {
                let name = cases::baseline_name(case.name);
                vec![
                    Case {
                        name,
                        proxy: Proxy::Baseline(chain),
                        baseline: None,
                    },
                    Case {
                        baseline: Some(name),
                        ..case
                    },
                ]
            }
            _ => vec![case],
        })
        .collect()
}

/// Instructions per request of `case`.
pub(crate) fn measure(case: &Case, env: &Env) -> Result<f64, String> {
    let dir = env.work.join("callgrind");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let slug: String = case
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let out = dir.join(format!("{slug}.out"));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    let headers: Vec<(&str, &str)> = match case.proxy {
        Proxy::Nginx => {
            let conf = env.work.join("nginx/callgrind.conf");
            setup::write(&conf, &cases::nginx_proxy_conf(&env.work, false))?;
            command
                .arg(&env.nginx)
                .arg("-p")
                .arg(env.work.join("nginx"))
                .arg("-c")
                .arg(&conf);
            vec![]
        }
        Proxy::Portcullis(chain) | Proxy::Baseline(chain) => {
            let binary = cases::binary(env, case.proxy)?;
            let conf = env.work.join("portcullis-callgrind.toml");
            // valgrind refuses the pooling allocator's default address
            // space reservation; four instances fit.
            let text = cases::portcullis_conf(chain) + "\n[limits]\nmax_instances = 4\n";
            setup::write(&conf, &text)?;
            // Compiled natively first, so the cache spares valgrind the
            // compiler.
            procs::run(
                Command::new(binary)
                    .arg("check")
                    .arg("--config")
                    .arg(&conf)
                    .stdout(std::process::Stdio::null()),
            )?;
            command.arg(binary).arg("run").arg("--config").arg(&conf);
            match chain {
                Chain::Empty | Chain::Neighbours => vec![],
                Chain::KeyAuth | Chain::Four | Chain::KeyAuthShadow | Chain::KeyAuthCanary => {
                    vec![KEY]
                }
            }
        }
        Proxy::Direct => return Err("the direct case has no proxy to count".into()),
    };
    let proxy = Proc::start(&mut command, &env.work.join(format!("logs/{slug}.log")))?;
    // Under valgrind, start-up (loading the cached modules, the first
    // instances and their `init`) runs some 50 times slower: four plugins
    // once took more than a minute.
    procs::wait_ready(PROXY_PORT, &headers, 200, Duration::from_secs(300))?;
    keep_alive_requests(&headers, WARMUP)?;
    control(&proxy, "-z")?;
    keep_alive_requests(&headers, REQUESTS)?;
    control(&proxy, "-d")?;
    drop(proxy);
    let dump = dir.join(format!("{slug}.out.1"));
    let total = totals(&dump)?;
    Ok(total as f64 / REQUESTS as f64)
}

fn control(proxy: &Proc, flag: &str) -> Result<(), String> {
    procs::run(
        Command::new("callgrind_control")
            .arg(flag)
            .arg(proxy.pid().to_string())
            .stdout(std::process::Stdio::null()),
    )
}

/// The `totals:` line of a callgrind dump.
fn totals(dump: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(dump)
        .map_err(|e| format!("reading the callgrind dump {}: {e}", dump.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no totals in {}", dump.display()))
}

/// Sends `count` `GET /` requests one after another on one keep-alive
/// connection, each answered 200 with a `Content-Length` body.
fn keep_alive_requests(headers: &[(&str, &str)], count: usize) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", PROXY_PORT)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut request = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    for i in 0..count {
        writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("request {i}: {e}"))?;
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .map_err(|e| format!("request {i}: {e}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("request {i} answered `{}`", status.trim()));
        }
        let mut length = None;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("request {i}: {e}"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or_else(|| format!("request {i}: no Content-Length"))?;
        let mut body = vec![0u8; length];
        reader
            .read_exact(&mut body)
            .map_err(|e| format!("request {i}: {e}"))?;
    }
    Ok(())
}
