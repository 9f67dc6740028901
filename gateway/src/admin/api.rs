//! The admin API's JSON answers, built from the current generation and the
//! registry (shapes in `openapi.json`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Admin;
use crate::alerts::{AlertSender, Payload};
use crate::registry::{HistoryEntry, Outcome, Registry, ReloadEvent};

/// The contract version plugins are built against.
pub(super) const CONTRACT: &str = "portcullis:policy@0.2.3";

/// RFC 3339 with milliseconds, UTC.
pub(super) fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The methods a known path allows, for a 405.
pub(super) fn allowed(path: &str, dashboard: bool) -> Option<&'static str> {
    match path {
        "/reload" => Some("POST"),
        "/" | "/dashboard" if dashboard => Some("GET, HEAD"),
        "/healthz" | "/readyz" | "/openapi.json" | "/metrics" | "/status" | "/routes"
        | "/plugins" | "/generations" | "/upstreams" | "/alerts" | "/audit" | "/stats"
        | "/shadows" | "/rollouts" => Some("GET, HEAD"),
        _ if path.starts_with("/rollouts/") => Some("POST"),
        _ => None,
    }
}

pub(super) fn status(admin: &Admin) -> Value {
    let started = admin.registry.metrics().started();
    let uptime = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default()
        .as_secs_f64();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": (uptime * 10.0).round() / 10.0,
        "started_at": time(started),
        "generation": admin.registry.current().id,
        "contract": CONTRACT,
        "ready": admin.lifecycle.is_ready(),
        "draining": admin.lifecycle.is_draining(),
        "listeners": admin.listeners.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// Words in a config key that mark its value as a secret. `jwk` covers
/// `jwks`: a JWKS may hold symmetric (`oct`) keys.
const SENSITIVE: [&str; 11] = [
    "key",
    "jwk",
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "htpasswd",
    "private",
    "salt",
    "authorization",
];

/// Whether a config key names a secret.
fn sensitive(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SENSITIVE.iter().any(|word| key.contains(word))
}

/// A plugin config as JSON, every value under a sensitive key replaced by
/// `"[redacted]"`.
pub(super) fn redacted(value: &toml::Value) -> Value {
    match value {
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| {
                    let shown = if sensitive(k) {
                        Value::String("[redacted]".into())
                    } else {
                        redacted(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        toml::Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
    }
}

pub(super) fn routes(registry: &Registry) -> Value {
    let generation = registry.current();
    let routes: Vec<Value> = generation
        .config
        .routes
        .iter()
        .map(|route| {
            let plugins: Vec<Value> = route
                .plugins
                .iter()
                .map(|p| {
                    let mut config = p.config.clone();
                    // Values read from files are secrets more often than not:
                    // operators put them in files to keep them out of config.
                    for key in p.files.keys() {
                        config.insert(key.clone(), toml::Value::String("[redacted]".into()));
                    }
                    json!({
                        "name": p.name,
                        "on_error": match p.on_error {
                            crate::config::OnError::Allow => "allow",
                            crate::config::OnError::Deny => "deny",
                        },
                        "timeout_ms": p.timeout_ms,
                        "config": redacted(&toml::Value::Table(config)),
                        "files": p.files.iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.display().to_string())))
                            .collect::<serde_json::Map<_, _>>(),
                        "canary": p.canary.as_ref().map(|c| json!({
                            "module": c.module.as_deref().unwrap_or(&p.name),
                            "config": redacted(&toml::Value::Table(c.config.clone())),
                            "steps": c.steps,
                        })),
                        "shadow": p.shadow.as_ref().map(|s| json!({
                            "module": s.module.as_deref().unwrap_or(&p.name),
                            "config": redacted(&toml::Value::Table(s.config.clone())),
                            "queue": s.queue,
                            "samples": s.samples,
                        })),
                        "outbound": p.outbound.as_ref().map(|o| json!({
                            "allow": o.allow,
                            "private_hosts": o.private_hosts,
                            "max_redirects": o.max_redirects,
                            "timeout_ms": o.timeout_ms,
                            "max_response_bytes": o.max_response_bytes,
                            "max_concurrent": o.max_concurrent,
                            "ca": o.ca.as_ref().map(|p| p.display().to_string()),
                        })),
                    })
                })
                .collect();
            json!({
                "name": route.name,
                "hosts": route.hosts,
                "path_prefix": route.path_prefix,
                "methods": route.methods,
                "upstream": route.upstream,
                "timeout_ms": route.timeout_ms,
                "websocket": route.websocket,
                "plugins": plugins,
            })
        })
        .collect();
    json!({ "generation": generation.id, "routes": routes })
}

/// Every shadow candidate of the current generation, with how its
/// decisions compared with the live plugin's.
pub(super) fn shadows(registry: &Registry) -> Value {
    let generation = registry.current();
    let shadows: Vec<crate::shadow::ShadowReport> = generation
        .routes
        .iter()
        .flat_map(|r| &r.chain)
        .filter_map(|link| link.shadow.as_ref())
        .map(|shadow| shadow.stats.report())
        .collect();
    json!({ "generation": generation.id, "shadows": shadows })
}

/// Every canary rollout of the current generation: where it stands and
/// how each arm fared at the current step.
pub(super) fn rollouts(registry: &Registry) -> Value {
    let generation = registry.current();
    let rollouts: Vec<Value> = generation
        .routes
        .iter()
        .flat_map(|r| &r.chain)
        .filter_map(|link| link.canary.as_ref())
        .map(|canary| canary.report_json())
        .collect();
    json!({ "generation": generation.id, "rollouts": rollouts })
}

/// `POST /rollouts/<route>/<plugin>/<command>`: an operator's command to a
/// canary. The error is the status to answer and why.
pub(super) fn rollout_command(
    registry: &Registry,
    path: &str,
    token: Option<String>,
) -> Result<Value, (http::StatusCode, String)> {
    let not_found = |what: String| (http::StatusCode::NOT_FOUND, what);
    let parts: Vec<&str> = path
        .strip_prefix("/rollouts/")
        .unwrap_or_default()
        .split('/')
        .collect();
    let [route, plugin, command] = parts.as_slice() else {
        return Err(not_found(format!(
            "no admin endpoint {path}: POST /rollouts/<route>/<plugin>/<pause|resume|promote|abort>"
        )));
    };
    let command = crate::rollout::Command::parse(command).ok_or_else(|| {
        (
            http::StatusCode::BAD_REQUEST,
            format!("`{command}`: the commands are pause, resume, promote and abort"),
        )
    })?;
    let generation = registry.current();
    let canary = generation
        .routes
        .iter()
        .find(|r| &*r.name == *route)
        .and_then(|r| r.chain.iter().find(|l| &*l.plugin == *plugin))
        .and_then(|l| l.canary.as_ref())
        .ok_or_else(|| not_found(format!("no canary of plugin `{plugin}` on route `{route}`")))?;
    canary
        .command(command, token)
        .map_err(|why| (http::StatusCode::CONFLICT, why))?;
    Ok(canary.report_json())
}

pub(super) fn plugins(registry: &Registry) -> Value {
    let plugins: Vec<Value> = registry
        .module_infos()
        .into_iter()
        .map(|m| match &m.compiled {
            Some(c) => json!({
                "name": m.name,
                "sha256": m.sha256,
                "version": m.version,
                "signer": m.signer,
                "size": c.size,
                "state": "compiled",
                "tier": match c.tier {
                    crate::plugin::Tier::Baseline => "baseline",
                    crate::plugin::Tier::Optimized => "optimized",
                },
                "from_cache": c.from_cache,
                "load_ms": (c.load_time.as_secs_f64() * 1e4).round() / 10.0,
                "loaded_at": time(c.loaded_at),
                "routes": m.routes,
            }),
            None => json!({
                "name": m.name,
                "sha256": m.sha256,
                "version": m.version,
                "signer": m.signer,
                "size": null,
                "state": "validated",
                "tier": null,
                "from_cache": null,
                "load_ms": null,
                "loaded_at": null,
                "routes": m.routes,
            }),
        })
        .collect();
    json!({ "plugins": plugins })
}

/// One reload as the API shows it.
pub(super) fn reload_event(event: &ReloadEvent) -> Value {
    let (generation, elapsed_ms, reason) = match &event.outcome {
        Outcome::Applied {
            generation,
            elapsed,
        } => (
            json!(generation),
            json!((elapsed.as_secs_f64() * 1e4).round() / 10.0),
            Value::Null,
        ),
        Outcome::Rejected { reason } | Outcome::Waiting { reason } => {
            (Value::Null, Value::Null, json!(reason))
        }
        _ => (Value::Null, Value::Null, Value::Null),
    };
    json!({
        "trigger": event.trigger.kind(),
        "plugin": event.trigger.plugin(),
        "result": event.outcome.kind(),
        "generation": generation,
        "elapsed_ms": elapsed_ms,
        "reason": reason,
    })
}

fn history_entry(entry: &HistoryEntry) -> Value {
    let mut value = reload_event(&entry.event);
    let plugin = entry.event.trigger.plugin();
    // The module the entry is about: the plugin's own for a module change,
    // else the first one changed.
    let module = entry
        .modules
        .iter()
        .find(|m| Some(m.name.as_str()) == plugin)
        .or(entry.modules.first());
    if let Value::Object(map) = &mut value {
        map.insert("time".into(), json!(time(entry.time)));
        map.insert(
            "time_ms".into(),
            json!(
                entry
                    .time
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            ),
        );
        map.insert(
            "sha256".into(),
            json!(module.and_then(|m| m.sha256.clone())),
        );
        map.insert(
            "previous_sha256".into(),
            json!(module.and_then(|m| m.previous.clone())),
        );
        map.insert(
            "modules".into(),
            Value::Array(
                entry
                    .modules
                    .iter()
                    .map(|m| json!({"name": m.name, "sha256": m.sha256, "previous_sha256": m.previous}))
                    .collect(),
            ),
        );
    }
    value
}

pub(super) fn generations(registry: &Registry) -> Value {
    let history: Vec<Value> = registry.history().iter().rev().map(history_entry).collect();
    json!({ "current": registry.current().id, "history": history })
}

pub(super) fn upstreams(registry: &Registry) -> Value {
    let generation = registry.current();
    let mut seen = std::collections::HashSet::new();
    let mut upstreams = Vec::new();
    for route in &generation.routes {
        let upstream = &route.upstream;
        if !seen.insert(upstream.name().to_owned()) {
            continue;
        }
        let config = upstream.config();
        upstreams.push(json!({
            "name": upstream.name(),
            "balance": serde_json::to_value(config.balance).unwrap_or(Value::Null),
            "protocol": match upstream.protocol() {
                crate::config::UpstreamProtocol::Http1 => "http1",
                crate::config::UpstreamProtocol::H2 => "h2",
                crate::config::UpstreamProtocol::H2c => "h2c",
            },
            "servers": serde_json::to_value(upstream.health()).unwrap_or(Value::Null),
        }));
    }
    upstreams.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({ "upstreams": upstreams })
}

pub(super) fn alerts(alerts: &AlertSender) -> Value {
    let recent = alerts.recent();
    // Firing: the last alert of each (plugin, route, kind, subject) whose
    // state says a condition holds: `firing` from plugins, `down` or
    // `ejected` from upstream health (an alert without a state is an
    // event, not a condition that fires and resolves).
    let subject = |a: &crate::alerts::Alert| {
        let label = |key| a.label(key).map(str::to_owned);
        (
            (a.plugin.clone(), a.route.clone(), a.kind.clone()),
            (label("client_ip"), label("consumer")),
            (label("upstream"), label("server")),
        )
    };
    let holds =
        |a: &crate::alerts::Alert| matches!(a.label("state"), Some("firing" | "down" | "ejected"));
    let mut last = std::collections::HashMap::new();
    for (i, alert) in recent.iter().enumerate() {
        last.insert(subject(alert), i);
    }
    let firing: Vec<Value> = recent
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, a)| last.get(&subject(a)) == Some(i) && holds(a))
        .map(|(_, a)| serde_json::to_value(Payload::from(a)).unwrap_or(Value::Null))
        .collect();
    let recent: Vec<Value> = recent
        .iter()
        .rev()
        .map(|a| serde_json::to_value(Payload::from(a)).unwrap_or(Value::Null))
        .collect();
    json!({ "firing": firing, "recent": recent })
}

/// A page of the audit trail: `after` and `limit` from the query string.
/// `Err`: a bad parameter, in words for a 400.
pub(super) fn audit(registry: &Registry, query: Option<&str>) -> Result<Value, String> {
    let mut after = 0u64;
    let mut limit = 100usize;
    for (key, value) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        match key {
            "after" => {
                after = value
                    .parse()
                    .map_err(|_| format!("after: not a record number: `{value}`"))?;
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| format!("limit: 1 to 1000, got `{value}`"))?;
            }
            _ => {}
        }
    }
    let Some(file) = registry.audit_file() else {
        return Ok(json!({ "enabled": false, "records": [], "more": false }));
    };
    let (records, more) = crate::audit::page(file, after, limit)?;
    Ok(json!({ "enabled": true, "records": records, "more": more }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_values_are_redacted_at_any_depth() {
        let config: toml::Value = toml::from_str(
            r#"
            header = "x-api-key"
            keys = [{ key = "k-123", consumer = "alice" }]
            [jwt]
            secret = "s3cr3t"
            issuer = "me"
            [[consumers]]
            name = "bob"
            password_hash = "$2y$..."
            "#,
        )
        .expect("toml");
        let shown = redacted(&config).to_string();
        for secret in ["k-123", "s3cr3t", "$2y$"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for kept in ["x-api-key", "\"me\"", "bob"] {
            assert!(shown.contains(kept), "{kept} not in {shown}");
        }
    }
}
