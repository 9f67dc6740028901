//! What a run needs before it measures: the tools (installed from Debian's
//! packages when missing), the release binaries, a certificate, the
//! plugins, and the fixed 1 KiB upstream (nginx, one worker, on CPU 1).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Options;
use crate::procs::{self, Proc};

/// The upstream every case reaches.
pub(crate) const UPSTREAM_PORT: u16 = 18000;
/// The proxy under test, plain HTTP.
pub(crate) const PROXY_PORT: u16 = 18080;
/// The proxy under test, TLS (HTTP/1.1 and HTTP/2 by ALPN).
pub(crate) const PROXY_TLS_PORT: u16 = 18443;
/// The CPU the proxy runs on; the load generator and the upstream share
/// the other.
pub(crate) const PROXY_CPU: &str = "0";
/// The CPU of the load generator and the upstream.
pub(crate) const LOAD_CPU: &str = "1";
/// The plugins the cases use, as cargo packages.
const PLUGINS: [&str; 5] = ["key-auth", "alerts", "rate-limit", "rewrite", "basic-auth"];

/// Tools and the Debian packages they come in.
const TOOLS: [(&str, &str); 7] = [
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("taskset", "util-linux"),
    ("openssl", "openssl"),
    ("valgrind", "valgrind"),
    ("callgrind_control", "valgrind"),
];

/// A prepared run: where things are, and the upstream, which lives as long
/// as this does.
#[derive(Debug)]
pub(crate) struct Env {
    /// Scratch directory.
    pub(crate) work: PathBuf,
    /// The release gateway binary.
    pub(crate) portcullis: PathBuf,
    /// The gateway binary of `--baseline`.
    pub(crate) baseline: Option<PathBuf>,
    /// The nginx binary.
    pub(crate) nginx: PathBuf,
    /// The upstream nginx.
    _upstream: Proc,
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Installs the missing tools with apt-get when running as root.
pub(crate) fn tools() -> Result<(), String> {
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|(tool, _)| on_path(tool).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if !root {
        return Err(format!(
            "missing {}; install them as root: apt-get install -y {}",
            missing
                .iter()
                .map(|(tool, _)| *tool)
                .collect::<Vec<_>>()
                .join(", "),
            packages.join(" ")
        ));
    }
    eprintln!("==> installing {}", packages.join(" "));
    procs::run(Command::new("apt-get").args(["update", "-qq"]))?;
    procs::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // Debian starts the nginx service it installs; the harness runs its
    // own, so stop that one (it listens on port 80, not on ours).
    let _ = Command::new("service").args(["nginx", "stop"]).output();
    Ok(())
}

/// Builds the release gateway and the plugins the cases load.
pub(crate) fn build(root: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("==> building the release gateway and the plugins");
    procs::run(Command::new(&cargo).current_dir(root).args([
        "build",
        "--release",
        "-p",
        "portcullis",
        "--bin",
        "portcullis",
    ]))?;
    let mut wasm = Command::new(&cargo);
    wasm.current_dir(root).args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--target-dir",
        "target/wasm",
    ]);
    for plugin in PLUGINS {
        wasm.args(["-p", plugin]);
    }
    procs::run(&mut wasm)
}

/// Writes the certificate, the plugins and the upstream's config, and
/// starts the upstream.
pub(crate) fn prepare(options: &Options) -> Result<Env, String> {
    for port in [UPSTREAM_PORT, PROXY_PORT, PROXY_TLS_PORT] {
        TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("port {port} is taken ({e}); stop what listens there"))?;
    }
    let work = options.work.clone();
    let _ = std::fs::remove_dir_all(&work);
    for dir in ["certs", "plugins", "state", "logs", "nginx", "keys"] {
        mkdir(&work.join(dir))?;
    }
    let portcullis = options.root.join("target/release/portcullis");
    if !portcullis.is_file() {
        return Err(format!(
            "{} is missing; run without --no-build",
            portcullis.display()
        ));
    }
    for plugin in PLUGINS {
        let file = format!("{}.wasm", plugin.replace('-', "_"));
        let from = options
            .root
            .join("target/wasm/wasm32-wasip2/release")
            .join(&file);
        std::fs::copy(&from, work.join("plugins").join(&file))
            .map_err(|e| format!("copying {}: {e}; run without --no-build", from.display()))?;
    }
    // The noisy neighbour's bcrypt passwords: the example's file.
    let htpasswd = options.root.join("examples/keys/users.htpasswd");
    std::fs::copy(&htpasswd, work.join("keys/users.htpasswd"))
        .map_err(|e| format!("copying {}: {e}", htpasswd.display()))?;
    // One ECDSA P-256 certificate for both proxies, as most sites serve now.
    procs::run(Command::new("openssl").current_dir(&work).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        "certs/key.pem",
        "-out",
        "certs/cert.pem",
    ]))?;
    let nginx = on_path("nginx").ok_or("nginx is not installed")?;
    let conf = work.join("nginx/upstream.conf");
    write(&conf, &upstream_conf(&work))?;
    let upstream = Proc::start(
        Command::new("taskset")
            .args(["-c", LOAD_CPU])
            .arg(&nginx)
            .arg("-p")
            .arg(work.join("nginx"))
            .arg("-c")
            .arg(&conf),
        &work.join("logs/upstream.log"),
    )?;
    procs::wait_ready(UPSTREAM_PORT, &[], 200, Duration::from_secs(60))?;
    Ok(Env {
        work,
        portcullis,
        baseline: options.baseline.clone(),
        nginx,
        _upstream: upstream,
    })
}

/// Settings every nginx of the harness shares: in the foreground, one
/// worker (or, without `master`, one process: under valgrind), no access
/// log, files in the scratch directory.
pub(crate) fn nginx_main(work: &Path, name: &str, master: bool) -> String {
    let dir = work.join("nginx");
    let dir = dir.display();
    let master = if master { "on" } else { "off" };
    format!(
        "daemon off;\nmaster_process {master};\nworker_processes 1;\n\
         pid {dir}/{name}.pid;\nerror_log {dir}/{name}.error.log warn;\n\
         events {{ worker_connections 4096; }}\n"
    )
}

/// Temporary paths inside the scratch directory, for an `http` block.
pub(crate) fn nginx_http_paths(work: &Path, name: &str) -> String {
    let dir = work.join("nginx");
    let dir = dir.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("{kind}_temp_path {dir}/{name}-{kind};\n"))
        .collect::<String>()
        + "access_log off;\n"
}

fn upstream_conf(work: &Path) -> String {
    let body = "x".repeat(1024);
    format!(
        "{main}http {{\n{paths}keepalive_requests 1000000;\n\
         server {{\n listen 127.0.0.1:{UPSTREAM_PORT} reuseport backlog=4096;\n\
         location / {{ default_type text/plain; return 200 \"{body}\"; }}\n}}\n}}\n",
        main = nginx_main(work, "upstream", true),
        paths = nginx_http_paths(work, "upstream"),
    )
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))
}
