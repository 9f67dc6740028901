//! The cases: which proxy, configured how, under which load; and one
//! measured run of a case.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::Options;
use crate::load::{Background, Load, Run};
use crate::procs::{self, Proc};
use crate::setup::{
    self, Env, PROXY_CPU, PROXY_PORT, PROXY_TLS_PORT, UPSTREAM_PORT, nginx_http_paths, nginx_main,
};

/// Groups of cases, chosen with `--cases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Plain HTTP/1.1: direct, nginx, Portcullis without plugins.
    Proxy,
    /// Portcullis with plugins.
    Plugins,
    /// HTTPS: keep-alive, and a new connection (full handshake) per request.
    Tls,
    /// HTTP/2 over TLS, many streams on one connection.
    H2,
    /// Many connections, and a noisy neighbour.
    Scenarios,
    /// Instructions per request under callgrind.
    Callgrind,
}

impl Group {
    /// Every group, in report order.
    pub(crate) const ALL: [Group; 6] = [
        Group::Proxy,
        Group::Plugins,
        Group::Tls,
        Group::H2,
        Group::Scenarios,
        Group::Callgrind,
    ];

    /// The group named `name` on the command line.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "proxy" => Some(Group::Proxy),
            "plugins" => Some(Group::Plugins),
            "tls" => Some(Group::Tls),
            "h2" => Some(Group::H2),
            "scenarios" => Some(Group::Scenarios),
            "callgrind" => Some(Group::Callgrind),
            _ => None,
        }
    }
}

/// The proxy a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proxy {
    /// None: the load goes straight to the upstream.
    Direct,
    /// nginx, one worker, upstream keep-alive.
    Nginx,
    /// Portcullis, one worker thread, with this plugin chain.
    Portcullis(Chain),
    /// The same, with the `--baseline` binary.
    Baseline(Chain),
}

/// A Portcullis route's plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    /// No plugins.
    Empty,
    /// key_auth.
    KeyAuth,
    /// alerts, key_auth, rate_limit (never trips), rewrite.
    Four,
    /// key_auth with a candidate of the same config in shadow.
    KeyAuthShadow,
    /// key_auth with a canary of the same config at 50%, sticky by
    /// client IP (the one client of a case is in one arm).
    KeyAuthCanary,
    /// No plugins on `/`, and beside it `/login`: basic_auth against a
    /// bcrypt (cost 10) htpasswd file, about 55 ms of CPU per wrong
    /// password (never cached).
    Neighbours,
}

/// The API key the plugin cases send (its SHA-256 is in the config).
pub(crate) const KEY: (&str, &str) = ("x-api-key", "bench-key");
const KEY_SHA256: &str = "b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7";
/// `alice:wrong`, a password the htpasswd file refuses.
const WRONG_PASSWORD: (&str, &str) = ("authorization", "Basic YWxpY2U6d3Jvbmc=");
/// Clients of the noisy neighbour, each waiting for its 401 before the
/// next try: eight bcrypt checks in flight.
const NOISY_CLIENTS: usize = 8;

/// A second load on the proxy while a case is measured, not measured
/// itself (only its count is reported).
#[derive(Debug, Clone)]
pub(crate) struct Noise {
    /// Where it goes.
    pub(crate) url: String,
    /// With which headers.
    pub(crate) headers: Vec<(&'static str, &'static str)>,
    /// Its connections.
    pub(crate) connections: usize,
}

/// One case.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// As reported.
    pub(crate) name: &'static str,
    /// Its group.
    pub(crate) group: Group,
    /// What it measures.
    pub(crate) proxy: Proxy,
    /// Under which load.
    pub(crate) load: Load,
    /// The case it is compared with in the report, by name.
    pub(crate) baseline: Option<&'static str>,
    /// Connections of the load generator, when not `--connections`.
    pub(crate) connections: Option<usize>,
    /// A load beside the measured one.
    pub(crate) noise: Option<Noise>,
}

/// The cases of `groups`.
pub(crate) fn all(groups: &[Group], baseline: bool) -> Vec<Case> {
    let plain = format!("http://127.0.0.1:{PROXY_PORT}/");
    let tls = format!("https://127.0.0.1:{PROXY_TLS_PORT}/");
    let wrk = |url: &str, headers: Vec<(&'static str, &'static str)>| Load::Wrk {
        url: url.to_string(),
        headers,
    };
    let close = vec![("Connection", "close")];
    let h2 = Load::H2 {
        url: tls.clone(),
        streams: 32,
    };
    let portcullis = Proxy::Portcullis(Chain::Empty);
    let case = |name, group, proxy, load, baseline| Case {
        name,
        group,
        proxy,
        load,
        baseline,
        connections: None,
        noise: None,
    };
    let many = |name, chain, connections, baseline| Case {
        connections: Some(connections),
        ..case(
            name,
            Group::Scenarios,
            Proxy::Portcullis(chain),
            wrk(&plain, vec![KEY]),
            baseline,
        )
    };
    let neighbours = Proxy::Portcullis(Chain::Neighbours);
    let cases = vec![
        case(
            "direct to the upstream",
            Group::Proxy,
            Proxy::Direct,
            wrk(&format!("http://127.0.0.1:{UPSTREAM_PORT}/"), vec![]),
            None,
        ),
        case(
            "nginx proxy_pass",
            Group::Proxy,
            Proxy::Nginx,
            wrk(&plain, vec![]),
            None,
        ),
        case(
            "portcullis, no plugins",
            Group::Proxy,
            portcullis,
            wrk(&plain, vec![]),
            Some("nginx proxy_pass"),
        ),
        case(
            "portcullis, key_auth",
            Group::Plugins,
            Proxy::Portcullis(Chain::KeyAuth),
            wrk(&plain, vec![KEY]),
            Some("portcullis, no plugins"),
        ),
        case(
            "portcullis, four plugins",
            Group::Plugins,
            Proxy::Portcullis(Chain::Four),
            wrk(&plain, vec![KEY]),
            Some("portcullis, no plugins"),
        ),
        // The candidate's calls share the proxy's one CPU: what a shadow
        // costs a saturated proxy.
        case(
            "portcullis, key_auth + shadow",
            Group::Plugins,
            Proxy::Portcullis(Chain::KeyAuthShadow),
            wrk(&plain, vec![KEY]),
            Some("portcullis, key_auth"),
        ),
        case(
            "portcullis, key_auth + canary",
            Group::Plugins,
            Proxy::Portcullis(Chain::KeyAuthCanary),
            wrk(&plain, vec![KEY]),
            Some("portcullis, key_auth"),
        ),
        case(
            "nginx https keep-alive",
            Group::Tls,
            Proxy::Nginx,
            wrk(&tls, vec![]),
            None,
        ),
        case(
            "portcullis https keep-alive",
            Group::Tls,
            portcullis,
            wrk(&tls, vec![]),
            Some("nginx https keep-alive"),
        ),
        case(
            "nginx https, handshake per request",
            Group::Tls,
            Proxy::Nginx,
            wrk(&tls, close.clone()),
            None,
        ),
        case(
            "portcullis https, handshake per request",
            Group::Tls,
            portcullis,
            wrk(&tls, close),
            Some("nginx https, handshake per request"),
        ),
        case(
            "nginx h2, 32 streams",
            Group::H2,
            Proxy::Nginx,
            h2.clone(),
            None,
        ),
        case(
            "portcullis h2, 32 streams",
            Group::H2,
            portcullis,
            h2,
            Some("nginx h2, 32 streams"),
        ),
        many("portcullis, no plugins, 256 conns", Chain::Empty, 256, None),
        many(
            "portcullis, four plugins, 256 conns",
            Chain::Four,
            256,
            Some("portcullis, no plugins, 256 conns"),
        ),
        many(
            "portcullis, no plugins, 1024 conns",
            Chain::Empty,
            1024,
            None,
        ),
        many(
            "portcullis, four plugins, 1024 conns",
            Chain::Four,
            1024,
            Some("portcullis, no plugins, 1024 conns"),
        ),
        case(
            "portcullis, quiet neighbour",
            Group::Scenarios,
            neighbours,
            wrk(&plain, vec![]),
            None,
        ),
        Case {
            noise: Some(Noise {
                url: format!("http://127.0.0.1:{PROXY_PORT}/login"),
                headers: vec![WRONG_PASSWORD],
                connections: NOISY_CLIENTS,
            }),
            ..case(
                "portcullis, noisy neighbour",
                Group::Scenarios,
                neighbours,
                wrk(&plain, vec![]),
                Some("portcullis, quiet neighbour"),
            )
        },
    ];
    let cases = cases.into_iter().filter(|c| groups.contains(&c.group));
    if !baseline {
        return cases.collect();
    }
    cases
        .flat_map(|case| match case.proxy {
            // The baseline build has no shadows or canaries.
            Proxy::Portcullis(Chain::KeyAuthShadow | Chain::KeyAuthCanary) => vec![case],
            Proxy::Portcullis(chain) if matches!(case.group, Group::Proxy | Group::Plugins) => {
                let name = baseline_name(case.name);
                let twin = Case {
                    name,
                    proxy: Proxy::Baseline(chain),
                    baseline: None,
                    ..case.clone()
                };
                vec![
                    twin,
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

/// The name of a case's twin run with the `--baseline` binary.
pub(crate) fn baseline_name(name: &str) -> &'static str {
    // A handful of names, once per run of the harness.
    Box::leak(format!("{name} [baseline build]").into_boxed_str())
}

/// The binary that runs a Portcullis case.
pub(crate) fn binary(env: &Env, proxy: Proxy) -> Result<&Path, String> {
    match proxy {
        Proxy::Baseline(_) => env
            .baseline
            .as_deref()
            .ok_or_else(|| "a baseline case without --baseline".to_string()),
        _ => Ok(&env.portcullis),
    }
}

/// One measured run of a case, as the report keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Completed requests per second.
    pub(crate) requests_per_second: f64,
    /// Median latency, ms.
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub(crate) p99_ms: Option<f64>,
    /// Peak RSS of the proxy (all its processes), MiB.
    pub(crate) peak_rss_mib: Option<f64>,
    /// CPU time of the proxy per request, us.
    pub(crate) cpu_us_per_request: f64,
    /// Answers other than 2xx/3xx, and socket errors.
    pub(crate) failures: u64,
    /// What the noise load saw over the warm-up and the measured run.
    pub(crate) noise: Option<Run>,
}

/// Starts the case's proxy, warms it up, measures, stops it.
pub(crate) fn measure(case: &Case, env: &Env, options: &Options) -> Result<Sample, String> {
    let ready = match case.proxy {
        Proxy::Portcullis(
            Chain::KeyAuth | Chain::Four | Chain::KeyAuthShadow | Chain::KeyAuthCanary,
        )
        | Proxy::Baseline(
            Chain::KeyAuth | Chain::Four | Chain::KeyAuthShadow | Chain::KeyAuthCanary,
        ) => vec![KEY],
        _ => vec![],
    };
    let mut proxy = match case.proxy {
        Proxy::Direct => None,
        Proxy::Nginx => Some(start_nginx(env)?),
        Proxy::Portcullis(chain) | Proxy::Baseline(chain) => Some(start_portcullis(
            binary(env, case.proxy)?,
            &env.work,
            chain,
        )?),
    };
    let port = match case.proxy {
        Proxy::Direct => UPSTREAM_PORT,
        _ => PROXY_PORT,
    };
    procs::wait_ready(port, &ready, 200, Duration::from_secs(60))?;
    let log = env.work.join("logs/h2load.tsv");
    let connections = case.connections.unwrap_or(options.connections);
    // The noise starts first and ends after the measured run (it stops by
    // itself), so that it loads the whole of it.
    let noise = case
        .noise
        .as_ref()
        .map(|noise| {
            Background::start(
                &noise.url,
                &noise.headers,
                options.warmup + options.duration + Duration::from_secs(2),
                noise.connections,
            )
        })
        .transpose()?;
    case.load.run(options.warmup, connections, &log)?;
    let pids = proxy.as_ref().map(Proc::tree).unwrap_or_default();
    let before = procs::cpu_ticks(&pids);
    let run = case.load.run(options.duration, connections, &log)?;
    let noise = noise.map(Background::finish).transpose()?;
    let cpu_seconds = (procs::cpu_ticks(&pids) - before) as f64 / procs::ticks_per_second();
    let peak_rss_mib = proxy
        .as_ref()
        .map(|_| procs::peak_rss_kib(&pids) as f64 / 1024.0);
    if let Some(proxy) = proxy.as_mut()
        && !proxy.running()
    {
        return Err(format!(
            "the proxy of `{}` exited during the run; see {}",
            case.name,
            env.work.join("logs").display()
        ));
    }
    drop(proxy);
    Ok(Sample {
        requests_per_second: run.requests_per_second,
        p50_ms: run.p50_ms,
        p99_ms: run.p99_ms,
        peak_rss_mib,
        cpu_us_per_request: if run.requests == 0 || pids.is_empty() {
            f64::NAN
        } else {
            cpu_seconds * 1e6 / run.requests as f64
        },
        failures: run.non_2xx + run.errors,
        noise,
    })
}

fn start_nginx(env: &Env) -> Result<Proc, String> {
    let work = &env.work;
    let conf = work.join("nginx/proxy.conf");
    setup::write(&conf, &nginx_proxy_conf(work, true))?;
    Proc::start(
        Command::new("taskset")
            .args(["-c", PROXY_CPU])
            .arg(&env.nginx)
            .arg("-p")
            .arg(work.join("nginx"))
            .arg("-c")
            .arg(&conf),
        &work.join("logs/nginx-proxy.log"),
    )
}

/// nginx as the reference proxy: HTTP/1.1 to the upstream with keep-alive,
/// the same forwarded headers Portcullis sets, the same certificate.
/// Without `master`, one process (for valgrind).
pub(crate) fn nginx_proxy_conf(work: &Path, master: bool) -> String {
    let certs = work.join("certs");
    let certs = certs.display();
    format!(
        "{main}http {{\n{paths}keepalive_requests 1000000;\n\
         upstream backend {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}\n\
         server {{\n\
         listen 127.0.0.1:{PROXY_PORT} backlog=4096;\n\
         listen 127.0.0.1:{PROXY_TLS_PORT} ssl http2 backlog=4096;\n\
         ssl_certificate {certs}/cert.pem;\n\
         ssl_certificate_key {certs}/key.pem;\n\
         ssl_protocols TLSv1.2 TLSv1.3;\n\
         location / {{\n\
         proxy_pass http://backend;\n\
         proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n\
         proxy_set_header Host $host;\n\
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         proxy_set_header X-Forwarded-Proto $scheme;\n\
         }}\n}}\n}}\n",
        main = nginx_main(work, "proxy", master),
        paths = nginx_http_paths(work, "proxy"),
    )
}

fn start_portcullis(binary: &Path, work: &Path, chain: Chain) -> Result<Proc, String> {
    let conf = work.join("portcullis.toml");
    setup::write(&conf, &portcullis_conf(chain))?;
    Proc::start(
        Command::new("taskset")
            .args(["-c", PROXY_CPU])
            .arg(binary)
            .arg("run")
            .arg("--config")
            .arg(&conf),
        &work.join("logs/portcullis.log"),
    )
}

/// Portcullis as the proxy: one worker thread, no access log (nginx's is
/// off too), the plain and TLS listeners nginx has, optimized plugin
/// builds only.
pub(crate) fn portcullis_conf(chain: Chain) -> String {
    let mut conf = format!(
        r#"state_directory = "state"
workers = 1

[[listeners]]
address = "127.0.0.1:{PROXY_PORT}"

[[listeners]]
address = "127.0.0.1:{PROXY_TLS_PORT}"
[[listeners.tls.certificates]]
cert = "certs/cert.pem"
key = "certs/key.pem"

[plugins]
directory = "plugins"
# Measure the optimized builds only: no Winch build serving while Cranelift
# compiles on the proxy's CPU. The first case to load a module compiles it
# before it answers; the cache in state/ serves the cases after it.
baseline_compiler = false

[log]
level = "warn"
access_log = false

[upstreams.bench]
servers = ["127.0.0.1:{UPSTREAM_PORT}"]

[[routes]]
name = "bench"
path_prefix = "/"
upstream = "bench"
"#
    );
    let key_auth = format!(
        r#"
[[routes.plugins]]
name = "key_auth"
[routes.plugins.config]
header = "{header}"
keys = [{{ consumer = "bench", sha256 = "{KEY_SHA256}", roles = ["member"] }}]
"#,
        header = KEY.0
    );
    match chain {
        Chain::Empty => {}
        Chain::Neighbours => conf.push_str(
            r#"
[[routes]]
name = "login"
path_prefix = "/login"
upstream = "bench"

[[routes.plugins]]
name = "basic_auth"
timeout_ms = 1000
files = { htpasswd = "keys/users.htpasswd" }
[routes.plugins.config]
realm = "login"
users = [{ username = "alice", roles = ["member"] }]
"#,
        ),
        Chain::KeyAuth => conf.push_str(&key_auth),
        Chain::KeyAuthShadow => {
            conf.push_str(&key_auth);
            conf.push_str("[routes.plugins.shadow]\n");
        }
        Chain::KeyAuthCanary => {
            conf.push_str(&key_auth);
            conf.push_str("[routes.plugins.canary]\nsteps = [50]\nstep_ms = 86400000\n");
        }
        Chain::Four => {
            conf.push_str(
                r#"
[[routes.plugins]]
name = "alerts"
[routes.plugins.config.auth_failures]
threshold = 5
window_s = 60
"#,
            );
            conf.push_str(&key_auth);
            conf.push_str(
                r#"
[[routes.plugins]]
name = "rate_limit"
[routes.plugins.config]
by = ["consumer"]
limits = [{ rate = 1000000, per = "second" }]

[[routes.plugins]]
name = "rewrite"
[routes.plugins.config.request_headers]
set = { x-gateway = "portcullis" }
[routes.plugins.config.response_headers]
set = { cache-control = "no-store" }
"#,
            );
        }
    }
    conf
}
