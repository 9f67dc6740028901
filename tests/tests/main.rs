//! The end-to-end tests, one module per capability, in one test binary:
//! each binary links the whole gateway and wasmtime, so one binary instead
//! of one per file saves gigabytes of disk and most of the link time.
//! `cargo test -p portcullis-tests --test integration rbac::` runs one
//! module. Tests share the process: log assertions (`logged`,
//! `logged_lines`) name something only their own test produces (a route, a
//! path, a directory). `reset_flood_memory.rs` stays a binary of its own.

mod alerts_plugin;
mod api_version;
mod audit;
mod basic_auth;
mod canary;
mod config_ui;
mod dashboard;
mod examples;
mod framing;
mod http2;
mod identity_provider;
mod jwt_auth;
mod mask;
mod module_cache;
mod observability;
mod otlp;
mod outbound;
mod policy_cases;
mod proxy;
mod rate_limit;
mod rbac;
mod reload;
mod rewrite;
mod runtime;
mod sandbox;
mod shadow;
mod signatures;
mod tls;
mod upstream_health;
mod upstream_protocols;
mod webhooks;
mod websocket;

/// Every file here is a module above, or a test binary of its own in
/// `tests/Cargo.toml`: with `autotests = false`, a file declared in
/// neither would never build or run, silently.
#[test]
fn every_test_file_is_built() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(here.join("main.rs")).expect("main.rs");
    let manifest = std::fs::read_to_string(here.join("../Cargo.toml")).expect("Cargo.toml");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&here).expect("tests/tests") {
        let path = entry.expect("entry").path();
        let (Some(stem), Some("rs")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        let declared = stem == "main"
            || main.contains(&format!("\nmod {stem};\n"))
            || manifest.contains(&format!("path = \"tests/{stem}.rs\""));
        if !declared {
            missing.push(stem.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "not built: {missing:?}: add `mod <name>;` to tests/tests/main.rs"
    );
}
