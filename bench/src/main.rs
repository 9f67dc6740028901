//! The benchmark harness: Portcullis and nginx side by side, the proxy on
//! one CPU, the load generator and the upstream on the other, cases
//! interleaved round by round so that both see the same machine.
//!
//! `cargo run --release -p portcullis-bench -- --help` lists the options;
//! `bench/README.md` says what each case measures and how to read the
//! report.

mod callgrind;
mod cases;
mod load;
mod procs;
mod report;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cases::Group;

/// What a run measures and how long.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Rounds of every case, interleaved.
    pub(crate) rounds: usize,
    /// Seconds of load per measured run.
    pub(crate) duration: Duration,
    /// Seconds of load before each measured run, not counted.
    pub(crate) warmup: Duration,
    /// Connections the load generator keeps open.
    pub(crate) connections: usize,
    /// Which cases.
    pub(crate) groups: Vec<Group>,
    /// Skip `cargo build` (the binaries are already built).
    pub(crate) no_build: bool,
    /// A gateway binary built from another commit: each Portcullis case of
    /// the proxy, plugins and callgrind groups also runs it, just before,
    /// and is compared with it.
    pub(crate) baseline: Option<PathBuf>,
    /// The repository root.
    pub(crate) root: PathBuf,
    /// Scratch directory: configs, certificates, logs, the report.
    pub(crate) work: PathBuf,
}

const USAGE: &str = "\
usage: cargo run --release -p portcullis-bench -- [options]

  --rounds N        rounds of every case, interleaved (default 3)
  --duration S      seconds of measured load per run (default 10)
  --warmup S        seconds of load before each run, not counted (default 2)
  --connections N   connections the load generator keeps open (default 32)
  --cases LIST      comma-separated groups: proxy, plugins, tls, h2, scenarios,
                    callgrind (default all)
  --no-build        use the binaries already built
  --baseline PATH   also run each Portcullis case of the proxy, plugins and
                    callgrind groups with this gateway binary (built from
                    another commit), side by side, and compare with it
";

fn parse_args() -> Result<Options, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .ok_or("the bench crate has no parent directory")?;
    let mut options = Options {
        rounds: 3,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        connections: 32,
        groups: Group::ALL.to_vec(),
        no_build: false,
        baseline: None,
        work: root.join("target/bench"),
        root,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}: `{text}` is not a positive whole number"))
        };
        match arg.as_str() {
            "--rounds" => options.rounds = number("--rounds", value("--rounds")?)? as usize,
            "--duration" => {
                options.duration = Duration::from_secs(number("--duration", value("--duration")?)?)
            }
            "--warmup" => {
                options.warmup = Duration::from_secs(number("--warmup", value("--warmup")?)?)
            }
            "--connections" => {
                options.connections = number("--connections", value("--connections")?)? as usize
            }
            "--cases" => {
                options.groups = value("--cases")?
                    .split(',')
                    .map(|name| {
                        Group::parse(name.trim()).ok_or_else(|| {
                            format!(
                                "--cases: unknown group `{name}`; use proxy, plugins, tls, h2, scenarios or callgrind"
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            "--no-build" => options.no_build = true,
            "--baseline" => {
                let path = PathBuf::from(value("--baseline")?);
                if !path.is_file() {
                    return Err(format!("--baseline: {} is not a file", path.display()));
                }
                options.baseline = Some(path);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<(), String> {
    setup::tools()?;
    if !options.no_build {
        setup::build(&options.root)?;
    }
    let env = setup::prepare(options)?;
    let cases = cases::all(&options.groups, options.baseline.is_some());
    let mut results = report::Results::new(&cases);
    eprintln!(
        "==> {} cases, {} rounds of {} s after {} s of warm-up each",
        cases.len(),
        options.rounds,
        options.duration.as_secs(),
        options.warmup.as_secs()
    );
    for round in 1..=options.rounds {
        for (index, case) in cases.iter().enumerate() {
            eprint!("round {round}/{}: {:<40} ", options.rounds, case.name);
            let sample = cases::measure(case, &env, options)?;
            eprintln!(
                "{:>9.0} req/s  p99 {:>7.2} ms  {:>6.1} us CPU/req",
                sample.requests_per_second,
                sample.p99_ms.unwrap_or(f64::NAN),
                sample.cpu_us_per_request
            );
            results.add(index, sample);
        }
    }
    if options.groups.contains(&Group::Callgrind) {
        for case in callgrind::all(options.baseline.is_some()) {
            eprint!("callgrind: {:<40} ", case.name);
            let instructions = callgrind::measure(&case, &env)?;
            eprintln!("{instructions:>9.0} instructions/request");
            results.add_instructions(case, instructions);
        }
    }
    let text = results.render(options);
    println!("{text}");
    let path = options.work.join("report.md");
    std::fs::write(&path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("==> report written to {}", path.display());
    Ok(())
}
