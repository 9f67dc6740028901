//! `[tracing]`: W3C trace context, and span export over OTLP.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::Problem;

/// W3C trace context (`traceparent`, `tracestate`), and where spans go.
///
/// ```toml
/// [tracing]
/// start_traces = true   # give requests without a traceparent a new trace
///
/// [tracing.otlp]        # export a span per sampled request (off without it)
/// endpoint = "http://127.0.0.1:4318/v1/traces"
/// ```
///
/// A request that comes with a valid `traceparent` always continues its
/// trace, with a new span id for this hop.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Start a trace (a new `traceparent`, sent upstream, its id in the
    /// access log) for requests that come without one. Off by default:
    /// `X-Request-Id` already ties a request's log lines together.
    #[serde(default)]
    pub start_traces: bool,
    /// Span export. Fixed at start: a change takes a restart.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

impl TracingConfig {
    /// The share of the traces started here that are sampled (flag `01`,
    /// exported): `otlp.sample_ratio`, or none without an exporter.
    pub fn sample_ratio(&self) -> f64 {
        self.otlp.as_ref().map_or(0.0, |o| o.sample_ratio)
    }
}

/// OTLP/HTTP span export (protobuf), as an OpenTelemetry Collector,
/// Jaeger or Tempo takes it on port 4318.
///
/// ```toml
/// [tracing.otlp]
/// endpoint = "https://collector.example:4318/v1/traces"
/// service_name = "edge-gateway"     # resource `service.name`
/// sample_ratio = 0.1                # of the traces started here
/// headers = { authorization = "Bearer ..." }
/// ca = "certs/collector-ca.pem"     # else the webpki roots
/// timeout_ms = 10000
/// queue = 4096                      # spans waiting; more are dropped
/// ```
///
/// A span is exported for each request whose trace is sampled: a
/// continued trace whose `traceparent` has the sampled flag, or a trace
/// started here (`start_traces`) and picked by `sample_ratio`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's traces URL (`http://` or `https://`), path included.
    pub endpoint: String,
    /// The resource's `service.name`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share (0 to 1) of the traces started here that are sampled.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Headers sent with each export (credentials: never shown by the
    /// admin API).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A PEM CA bundle the collector's certificate must chain to; without
    /// it, the webpki roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long one export may take, retries included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How many spans may wait for export; past it new spans are dropped
    /// (and counted), never the request.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_service_name() -> String {
    "portcullis".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_queue() -> usize {
    4096
}

impl OtlpConfig {
    pub(super) fn resolve_paths(&mut self, resolve: &impl Fn(&mut PathBuf)) {
        if let Some(ca) = self.ca.as_mut() {
            resolve(ca);
        }
    }

    /// Whether the endpoint is `https://`.
    pub fn is_https(&self) -> bool {
        self.endpoint.starts_with("https://")
    }
}

pub(super) fn validate(tracing: &TracingConfig, problems: &mut Vec<Problem>) {
    let Some(otlp) = &tracing.otlp else { return };
    let mut bad = |key: &str, message: String| {
        problems.push(Problem {
            key: format!("tracing.otlp.{key}"),
            message,
        })
    };
    match otlp.endpoint.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {}
        Ok(_) => bad(
            "endpoint",
            format!(
                "must be an http:// or https:// URL with a host, got `{}`",
                otlp.endpoint
            ),
        ),
        Err(e) => bad("endpoint", format!("not a URL (`{}`): {e}", otlp.endpoint)),
    }
    if otlp.service_name.trim().is_empty() {
        bad("service_name", "must not be empty".into());
    }
    if !(0.0..=1.0).contains(&otlp.sample_ratio) {
        bad(
            "sample_ratio",
            format!("must be between 0 and 1, got {}", otlp.sample_ratio),
        );
    }
    for (name, value) in &otlp.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            bad(&format!("headers.{name}"), "not a valid header name".into());
        } else if http::HeaderValue::from_str(value).is_err() {
            bad(
                &format!("headers.{name}"),
                "not a valid header value (visible ASCII)".into(),
            );
        }
    }
    if otlp.ca.is_some() && !otlp.is_https() {
        bad("ca", "set only for an https:// endpoint".into());
    }
    if !(1..=300_000).contains(&otlp.timeout_ms) {
        bad(
            "timeout_ms",
            format!("must be between 1 and 300000, got {}", otlp.timeout_ms),
        );
    }
    if !(1..=1_000_000).contains(&otlp.queue) {
        bad(
            "queue",
            format!("must be between 1 and 1000000, got {}", otlp.queue),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<String> {
        let tracing: TracingConfig = toml::from_str(toml_text).expect("parses");
        let mut problems = Vec::new();
        validate(&tracing, &mut problems);
        problems
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    #[test]
    fn a_good_exporter_passes_and_defaults_fill_in() {
        let text = "[otlp]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
        assert!(problems(text).is_empty());
        let tracing: TracingConfig = toml::from_str(text).expect("parses");
        let otlp = tracing.otlp.clone().expect("otlp");
        assert_eq!(otlp.service_name, "portcullis");
        assert_eq!(otlp.sample_ratio, 1.0);
        assert_eq!(tracing.sample_ratio(), 1.0);
        assert_eq!(TracingConfig::default().sample_ratio(), 0.0);
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let found = problems(
            "[otlp]\nendpoint = \"grpc://x:4317\"\nsample_ratio = 1.5\nca = \"ca.pem\"\n\
             timeout_ms = 0\nqueue = 0\nservice_name = \" \"\nheaders = { \"bad name\" = \"v\" }\n",
        );
        for key in [
            "tracing.otlp.endpoint",
            "tracing.otlp.sample_ratio",
            "tracing.otlp.ca",
            "tracing.otlp.timeout_ms",
            "tracing.otlp.queue",
            "tracing.otlp.service_name",
            "tracing.otlp.headers.bad name",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(&format!("{key}:"))),
                "{key} in {found:?}"
            );
        }
    }
}
