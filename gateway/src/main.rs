//! The `portcullis` binary: parse arguments, set up logging, load the config,
//! start the gateway, and wait for signals.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::Gateway;
use portcullis::config::{Config, LogConfig, LogFormat};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Portcullis: an API gateway whose policies are hot-loaded WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM. SIGHUP reloads the config file;
    /// changes to the config file and the plugin directory are also picked up
    /// on their own unless `plugins.watch = false`.
    Run {
        /// The TOML config file. Relative paths inside it are relative to the file.
        #[arg(short, long, value_name = "FILE", default_value = "portcullis.toml")]
        config: PathBuf,
        /// Log format, overriding `log.format` in the config: `text` or `json`.
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<LogFormatArg>,
    },
    /// Check the config file and load every plugin it uses (compile, check
    /// the contract, `init` with each route's config), then exit: 0 if the
    /// gateway would start, 1 with every problem otherwise. Binds no port.
    Check {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Run a file of policy cases against the config and its plugins,
    /// offline: each request goes through the real pipeline to a
    /// stand-in upstream, and what the client and the upstream receive is
    /// checked. Prints each case; exits 0 if all pass, 1 if any fails, 2
    /// if the cases or the config cannot be run. See docs/safe-updates.md.
    Test {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", default_value = "portcullis.toml")]
        config: PathBuf,
        /// The case file (`[[case]]` tables).
        cases: PathBuf,
    },
    /// Make a new plugin crate, NAME/, that builds and passes at once: the
    /// SDK, a typed config, unit tests, a README with its config table, a
    /// gateway config and a case file for `portcullis test`.
    New {
        /// The crate's name (`require-client-id`); its module is
        /// `require_client_id.wasm`.
        name: String,
        /// Where to make it.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// The SDK (the plugin-sdk directory of a Portcullis checkout); by
        /// default the one of the tree this binary was built from.
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
    },
    /// Watch or steer the canary rollouts of a running gateway, through
    /// its admin API (found in the config's `[admin]`; the token from
    /// there or from PORTCULLIS_ADMIN_TOKEN).
    Rollout {
        /// `status`, `pause` (hold at the step), `resume`, `promote` (every
        /// request to the candidate now) or `abort` (none, now).
        command: RolloutCommand,
        /// The route of the canary (for a command; `status` shows all).
        #[arg(long)]
        route: Option<String>,
        /// The plugin with the canary on that route.
        #[arg(long)]
        plugin: Option<String>,
        /// The gateway's config file.
        #[arg(short, long, value_name = "FILE", default_value = "portcullis.toml")]
        config: PathBuf,
        /// The CA bundle the admin listener's certificate is checked
        /// against, when it has TLS (default: the webpki roots).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Work with the audit trail of policy changes.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Make an Ed25519 key pair for signing plugin modules: `<OUT>.key`
    /// (private, mode 0600; keep it in your CI's secrets) and `<OUT>.pub`
    /// (list it in `[signatures] trusted_keys`). Prints the key id.
    Keygen {
        /// Where to write, without extension (`keys/release`).
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Sign a plugin module: writes `<MODULE>.sig` over the plugin's name,
    /// the version stamped in it and its SHA-256. Copy both into the
    /// plugin directory, in either order.
    Sign {
        /// The private key (`PRIVATE KEY` PEM, Ed25519, as `keygen` or
        /// `openssl genpkey -algorithm ed25519` writes it).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The plugin name it is signed for; by default the module's file
        /// name (`key_auth.wasm`: `key_auth`).
        #[arg(long)]
        name: Option<String>,
        /// The module.
        module: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit trail: exit 0 and print the
    /// number of records and the last one's SHA-256, or exit 1 naming the
    /// first broken record.
    Verify {
        /// The trail's file; by default the config's (`[audit] file`).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// The config file, to find the trail.
        #[arg(short, long, value_name = "FILE", default_value = "portcullis.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RolloutCommand {
    Status,
    Pause,
    Resume,
    Promote,
    Abort,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// Logs go to stderr through a writer thread: a request's worker queues
/// its lines (the access log's among them) and goes on. The queue holds
/// 128k lines; when it is full the worker waits rather than drop a line.
/// Dropping the guard (at the end of `main`) writes what is queued.
fn init_tracing(log: &LogConfig, format: Option<LogFormatArg>) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormatArg::Json) => true,
        Some(LogFormatArg::Text) => false,
        None => log.format == LogFormat::Json,
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portcullis-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config_path, log_format, check_only) = match cli.command {
        Command::Run { config, log_format } => (config, log_format, false),
        Command::Check { config } => (config, None, true),
        Command::Test { config, cases } => return test_cases(&config, &cases),
        Command::Rollout {
            command,
            route,
            plugin,
            config,
            ca,
        } => return done(rollout(command, route, plugin, &config, ca.as_deref())),
        Command::New { name, dir, sdk } => {
            return done(
                portcullis::scaffold::create(&name, &dir, sdk.as_deref()).map(|created| {
                    let dir = created.directory.display();
                    let module = created.module;
                    format!(
                        "Created {dir} (plugin {module}). Then:\n  \
                         cd {dir}\n  \
                         cargo test                                           # unit tests, on the host\n  \
                         cargo build --release --target wasm32-wasip2         # target/wasm32-wasip2/release/{module}.wasm\n  \
                         portcullis test --config portcullis.toml cases.toml  # the policy cases, offline"
                    )
                }),
            );
        }
        Command::Keygen { out } => {
            let (private, public) = portcullis::signing::key_pair_paths(&out);
            return done(
                portcullis::signing::write_key_pair(&out)
                    .map(|id| format!("{} and {}: key {id}", private.display(), public.display())),
            );
        }
        Command::Audit {
            command: AuditCommand::Verify { file, config },
        } => return done(verify_audit(file, &config)),
        Command::Sign { key, name, module } => {
            return done(portcullis::signing::sign_module(
                &key,
                &module,
                name.as_deref(),
            ));
        }
    };
    // A bad config exits here, before anything binds a port.
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _log_writer = init_tracing(&config.log, log_format);

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.workers {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if check_only {
            return check(config_path).await;
        }
        run(config_path).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `portcullis audit verify`.
fn verify_audit(file: Option<PathBuf>, config: &std::path::Path) -> Result<String, String> {
    let path = match file {
        Some(file) => file,
        None => Config::load(config)
            .map_err(|e| e.to_string())?
            .audit
            .file()
            .ok_or("`[audit] enabled = false` in the config: no trail to verify")?,
    };
    let verified =
        portcullis::audit::verify(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!(
        "{}: {} records, chain intact; last record's SHA-256 {}",
        path.display(),
        verified.records,
        verified.head
    ))
}

/// `portcullis test`: warnings (a plugin that failed) go to stderr, the
/// report to stdout.
fn test_cases(config: &std::path::Path, cases: &std::path::Path) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(portcullis::cases::run(config, cases)) {
        Ok(report) => {
            println!("{report}");
            if report.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `portcullis rollout`.
fn rollout(
    command: RolloutCommand,
    route: Option<String>,
    plugin: Option<String>,
    config: &std::path::Path,
    ca: Option<&std::path::Path>,
) -> Result<String, String> {
    use portcullis::admin::client::{AdminTarget, describe_rollout};
    let target = AdminTarget::from_config(config, ca)?;
    let path = match (command, route, plugin) {
        (RolloutCommand::Status, _, _) => "/rollouts".to_owned(),
        (command, Some(route), Some(plugin)) => {
            let name = format!("{command:?}").to_ascii_lowercase();
            format!("/rollouts/{route}/{plugin}/{name}")
        }
        _ => return Err("a rollout command needs --route and --plugin".into()),
    };
    let method = if command == RolloutCommand::Status {
        http::Method::GET
    } else {
        http::Method::POST
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let answer = runtime.block_on(target.call(method, &path))?;
    Ok(match answer["rollouts"].as_array() {
        Some(rollouts) if rollouts.is_empty() => "no canary rollout".to_owned(),
        Some(rollouts) => rollouts
            .iter()
            .map(describe_rollout)
            .collect::<Vec<_>>()
            .join("\n"),
        None => describe_rollout(&answer),
    })
}

/// Prints what a one-shot command did, or its error; its exit code.
fn done(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(what) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(config_path: PathBuf) -> anyhow::Result<()> {
    let registry = Gateway::builder(&config_path).check().await?;
    let generation = registry.current();
    let plugins: usize = generation.routes.iter().map(|r| r.chain.len()).sum();
    println!(
        "{}: OK ({} routes, {plugins} plugin configs accepted)",
        config_path.display(),
        generation.routes.len()
    );
    Ok(())
}

async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let gateway = Gateway::builder(&config_path).start().await?;
    wait_for_signals(&gateway).await?;
    tracing::info!("shutting down: draining requests in flight");
    gateway.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signals(gateway: &portcullis::GatewayHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                gateway.reload_on_signal().await?;
            }
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_gateway: &portcullis::GatewayHandle) -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}
