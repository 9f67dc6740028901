//! The report: per case the median of its rounds with the spread, and the
//! ratios to each case's baseline, as a Markdown table.

use std::fmt::Write;

use crate::Options;
use crate::callgrind;
use crate::cases::{Case, Sample};
use crate::load::percentile;

/// Every round of every case.
#[derive(Debug)]
pub(crate) struct Results {
    cases: Vec<Case>,
    samples: Vec<Vec<Sample>>,
    /// Instructions per request of the callgrind cases.
    instructions: Vec<(callgrind::Case, f64)>,
}

/// The median of `values` (NaNs left out), if any.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.filter(|v| !v.is_nan()).collect();
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{v:.decimals$}"))
}

impl Results {
    /// Results for `cases`, none measured yet.
    pub(crate) fn new(cases: &[Case]) -> Self {
        Self {
            cases: cases.to_vec(),
            samples: vec![Vec::new(); cases.len()],
            instructions: Vec::new(),
        }
    }

    /// Adds one round of case number `index`.
    pub(crate) fn add(&mut self, index: usize, sample: Sample) {
        if let Some(samples) = self.samples.get_mut(index) {
            samples.push(sample);
        }
    }

    /// Adds a callgrind case's instructions per request.
    pub(crate) fn add_instructions(&mut self, case: callgrind::Case, instructions: f64) {
        self.instructions.push((case, instructions));
    }

    fn median_rate(&self, name: &str) -> Option<f64> {
        let index = self.cases.iter().position(|c| c.name == name)?;
        median(self.samples[index].iter().map(|s| s.requests_per_second))
    }

    fn median_cpu(&self, name: &str) -> Option<f64> {
        let index = self.cases.iter().position(|c| c.name == name)?;
        median(self.samples[index].iter().map(|s| s.cpu_us_per_request))
    }

    /// The report, in Markdown.
    pub(crate) fn render(&self, options: &Options) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Portcullis benchmark\n\n\
             Proxy on CPU 0 (nginx one worker, Portcullis `workers = 1`); load generator and \
             the nginx upstream (1 KiB answer) on CPU 1. {} rounds of {} s after {} s of \
             warm-up, cases interleaved; wrk `-t1 -c{}` (unless the case names its \
             connections), h2load `-t1 -c1 -m32`. Medians, with \
             the min and max of the rounds; CPU is the proxy's user plus system time per \
             request; peak RSS is VmHWM; failures are non-2xx/3xx answers and socket errors \
             over all rounds. The ratio compares median req/s (and CPU per request) with the \
             case named.\n",
            options.rounds,
            options.duration.as_secs(),
            options.warmup.as_secs(),
            options.connections
        );
        if self.cases.is_empty() {
            return self.render_instructions(out);
        }
        let _ = writeln!(
            out,
            "| case | req/s (min-max) | p50 ms | p99 ms | peak RSS MiB | CPU us/req | failures | vs | req/s ratio | CPU ratio |\n\
             | --- | --: | --: | --: | --: | --: | --: | --- | --: | --: |"
        );
        for (case, samples) in self.cases.iter().zip(&self.samples) {
            let rates = || samples.iter().map(|s| s.requests_per_second);
            let rate = median(rates());
            let min = rates().fold(f64::INFINITY, f64::min);
            let max = rates().fold(0.0, f64::max);
            let cpu = median(samples.iter().map(|s| s.cpu_us_per_request));
            let (vs, rate_ratio, cpu_ratio) = match case.baseline {
                Some(base) => (
                    base,
                    rate.zip(self.median_rate(base)).map(|(a, b)| a / b),
                    cpu.zip(self.median_cpu(base)).map(|(a, b)| a / b),
                ),
                None => ("", None, None),
            };
            let ratio = |r: Option<f64>| r.map_or_else(String::new, |r| format!("{r:.2}x"));
            let _ = writeln!(
                out,
                "| {} | {} ({:.0}-{:.0}) | {} | {} | {} | {} | {} | {} | {} | {} |",
                case.name,
                cell(rate, 0),
                min,
                max,
                cell(median(samples.iter().filter_map(|s| s.p50_ms)), 2),
                cell(median(samples.iter().filter_map(|s| s.p99_ms)), 2),
                cell(median(samples.iter().filter_map(|s| s.peak_rss_mib)), 1),
                cell(cpu, 1),
                samples.iter().map(|s| s.failures).sum::<u64>(),
                vs,
                ratio(rate_ratio),
                ratio(cpu_ratio),
            );
        }
        for (case, samples) in self.cases.iter().zip(&self.samples) {
            let Some(noise) = &case.noise else { continue };
            let rate = median(
                samples
                    .iter()
                    .filter_map(|s| s.noise.as_ref())
                    .map(|run| run.requests_per_second),
            );
            let _ = writeln!(
                out,
                "\nWhile `{}` was measured, its neighbour's {} clients sent to `{}` (headers: \
                 {}) and were answered {} times per second (median of the rounds), every \
                 one of those answers counted with the run's CPU time.",
                case.name,
                noise.connections,
                noise.url,
                noise
                    .headers
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", "),
                cell(rate, 1),
            );
        }
        self.render_instructions(out)
    }

    fn render_instructions(&self, mut out: String) -> String {
        if !self.instructions.is_empty() {
            let _ = writeln!(
                out,
                "\nInstructions per request under callgrind (all threads; {} requests one \
                 after another on one keep-alive connection, counted after a warm-up): they \
                 repeat on a shared machine, so compare them between commits.\n\n\
                 | case | instructions per request | vs | ratio |\n| --- | --: | --- | --: |",
                callgrind::REQUESTS
            );
            for (case, instructions) in &self.instructions {
                let base = case.baseline.and_then(|name| {
                    self.instructions
                        .iter()
                        .find(|(c, _)| c.name == name)
                        .map(|(_, i)| *i)
                });
                let ratio = base.map_or_else(String::new, |b| format!("{:.2}x", instructions / b));
                let _ = writeln!(
                    out,
                    "| {} | {instructions:.0} | {} | {ratio} |",
                    case.name,
                    case.baseline.unwrap_or("")
                );
            }
        }
        out
    }
}
