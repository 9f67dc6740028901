//! The load generators, pinned to the load CPU: wrk for HTTP/1.1 (plain
//! and TLS), h2load for HTTP/2. Each run is parsed into a [`Run`].

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::setup::LOAD_CPU;

/// What the load generator saw in one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    /// Completed requests.
    pub(crate) requests: u64,
    /// Completed requests per second.
    pub(crate) requests_per_second: f64,
    /// Median latency, in ms.
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile latency, in ms.
    pub(crate) p99_ms: Option<f64>,
    /// Answers other than 2xx or 3xx.
    pub(crate) non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub(crate) errors: u64,
}

/// How a case loads the proxy.
#[derive(Debug, Clone)]
pub(crate) enum Load {
    /// wrk, HTTP/1.1 keep-alive (or a new connection per request with
    /// `Connection: close`).
    Wrk {
        url: String,
        headers: Vec<(&'static str, &'static str)>,
    },
    /// h2load over TLS with ALPN h2: one connection, this many streams.
    H2 { url: String, streams: usize },
}

impl Load {
    /// Runs the load for `duration` and parses what it printed. `log` is a
    /// scratch file for per-request timings.
    pub(crate) fn run(
        &self,
        duration: Duration,
        connections: usize,
        log: &Path,
    ) -> Result<Run, String> {
        let seconds = duration.as_secs().max(1).to_string();
        match self {
            Load::Wrk { url, headers } => {
                parse_wrk(&output(&mut wrk(url, headers, duration, connections))?)
            }
            Load::H2 { url, streams } => {
                let mut command = Command::new("taskset");
                command.args(["-c", LOAD_CPU, "h2load", "-t1", "-c1"]);
                command.arg(format!("-m{streams}"));
                command.args(["-D", &seconds]);
                command.arg(format!("--log-file={}", log.display()));
                command.arg(url);
                let text = output(&mut command)?;
                let mut run = parse_h2load(&text)?;
                let log = std::fs::read_to_string(log)
                    .map_err(|e| format!("reading {}: {e}", log.display()))?;
                let mut latencies = parse_h2load_log(&log);
                latencies.sort_by(f64::total_cmp);
                run.p50_ms = percentile(&latencies, 0.50);
                run.p99_ms = percentile(&latencies, 0.99);
                Ok(run)
            }
        }
    }
}

/// A load that runs beside a measured one (the noisy neighbour's clients),
/// started before the warm-up and read when it ends.
#[derive(Debug)]
pub(crate) struct Background {
    child: Child,
}

impl Background {
    /// Starts wrk with `url` and `headers` for `duration`.
    pub(crate) fn start(
        url: &str,
        headers: &[(&'static str, &'static str)],
        duration: Duration,
        connections: usize,
    ) -> Result<Self, String> {
        let mut command = wrk(url, headers, duration, connections);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {command:?}: {e}"))?;
        Ok(Self { child })
    }

    /// Waits for the load to end (it stops by itself) and reads it.
    pub(crate) fn finish(self) -> Result<Run, String> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| format!("waiting for the background wrk: {e}"))?;
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    }
}

/// wrk on the load CPU: one thread, `connections`, for `duration`.
fn wrk(
    url: &str,
    headers: &[(&'static str, &'static str)],
    duration: Duration,
    connections: usize,
) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", LOAD_CPU, "wrk", "-t1", "--latency"]);
    command.arg(format!("-c{connections}"));
    command.arg(format!("-d{}s", duration.as_secs().max(1)));
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    command.arg(url);
    command
}

fn output(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

/// A wrk duration (`585.00us`, `1.16ms`, `2.00s`) in ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1000.0),
        "ms" => Some(number),
        "s" => Some(number * 1000.0),
        "m" => Some(number * 60_000.0),
        _ => None,
    }
}

fn parse_wrk(text: &str) -> Result<Run, String> {
    let mut run = Run::default();
    let mut seen_rate = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => run.p50_ms = wrk_ms(value),
            ["99%", value] => run.p99_ms = wrk_ms(value),
            [count, "requests", "in", ..] => run.requests = count.parse().unwrap_or(0),
            ["Requests/sec:", value] => {
                run.requests_per_second = value.parse().unwrap_or(0.0);
                seen_rate = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                run.non_2xx = count.parse().unwrap_or(0)
            }
            ["Socket", "errors:", rest @ ..] => {
                run.errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum()
            }
            _ => {}
        }
    }
    if seen_rate {
        Ok(run)
    } else {
        Err(format!("could not read wrk's output:\n{text}"))
    }
}

fn parse_h2load(text: &str) -> Result<Run, String> {
    let mut run = Run::default();
    let mut seen_rate = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["finished", "in", _, rate, "req/s,", ..] => {
                run.requests_per_second = rate.parse().unwrap_or(0.0);
                seen_rate = true;
            }
            ["requests:", ..] => {
                let count = |name| count_of(&words, name);
                run.requests = count("succeeded");
                run.errors = count("failed") + count("errored") + count("timeout");
            }
            ["status", "codes:", ..] => {
                let count = |class| count_of(&words, class);
                run.non_2xx = count("4xx") + count("5xx");
            }
            _ => {}
        }
    }
    if seen_rate {
        Ok(run)
    } else {
        Err(format!("could not read h2load's output:\n{text}"))
    }
}

/// In h2load's `123 succeeded, 4 failed`, the number before `name`.
fn count_of(words: &[&str], name: &str) -> u64 {
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches(',') == name)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

/// Latencies in ms from h2load's `--log-file`: start time, status, and
/// microseconds to the end of the response, tab-separated.
fn parse_h2load_log(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|line| line.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect()
}

/// The `q` quantile of sorted `values`.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:18080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   750.12us  100.00us   5.00ms   90.00%
    Req/Sec    42.67k     1.00k   44.00k    80.00%
  Latency Distribution
     50%  585.00us
     75%  700.00us
     90%  800.00us
     99%    1.16ms
  426660 requests in 10.00s, 500.00MB read
  Non-2xx or 3xx responses: 21
  Socket errors: connect 0, read 2, write 1, timeout 0
Requests/sec:  42666.00
Transfer/sec:     50.00MB
";

    #[test]
    fn wrk_output_is_read() {
        let run = parse_wrk(WRK).expect("parsed");
        assert_eq!(run.requests, 426_660);
        assert_eq!(run.requests_per_second, 42_666.0);
        assert_eq!(run.p50_ms, Some(0.585));
        assert_eq!(run.p99_ms, Some(1.16));
        assert_eq!(run.non_2xx, 21);
        assert_eq!(run.errors, 3);
        assert!(parse_wrk("unable to connect to 127.0.0.1:18080").is_err());
    }

    const H2LOAD: &str = "starting benchmark...
finished in 10.00s, 12345.60 req/s, 14.38MB/s
requests: 123456 total, 123460 started, 123456 done, 123450 succeeded, 6 failed, 0 errored, 0 timeout
status codes: 123440 2xx, 0 3xx, 4 4xx, 6 5xx
traffic: 143.81MB (150796800) total
";

    #[test]
    fn h2load_output_and_log_are_read() {
        let run = parse_h2load(H2LOAD).expect("parsed");
        assert_eq!(run.requests, 123_450);
        assert_eq!(run.requests_per_second, 12_345.6);
        assert_eq!(run.non_2xx, 10);
        assert_eq!(run.errors, 6);
        let mut latencies = parse_h2load_log("1\t200\t1500\n2\t200\t500\n3\t200\t1000\n");
        latencies.sort_by(f64::total_cmp);
        assert_eq!(percentile(&latencies, 0.5), Some(1.0));
        assert_eq!(percentile(&latencies, 0.99), Some(1.5));
    }
}
