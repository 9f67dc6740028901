//! Builds the guest fixtures (the example plugins and the deliberately bad
//! ones) for `wasm32-wasip2` and exposes their paths as constants.
//!
//! Every crate under `plugins/` is built (constant: its name in upper snake
//! case, e.g. `RATE_LIMIT`), plus the fixtures under `tests/fixtures/`.
//! `PORTCULLIS_ONLY_PLUGINS=rbac,api-version` builds just those plugins (the
//! constants of the others still exist, pointing at their last build): for
//! working on one plugin while another is half-written.
//!
//! The nested `cargo` uses its own target directory (`target/wasm`), so it
//! never waits on the build lock of the `cargo` that runs this script.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test-only guests: (package, output file stem, constant).
const FIXTURES: &[(&str, &str, &str)] = &[
    ("stamp", "stamp", "STAMP_V1"),
    ("noop", "noop", "NOOP"),
    ("misbehave", "misbehave", "MISBEHAVE"),
    ("wrong-world", "wrong-world", "WRONG_WORLD"),
    ("shape-probe", "shape_probe", "SHAPE_PROBE"),
    ("contract-0-2-0", "contract_0_2_0", "CONTRACT_0_2_0"),
];

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = root.join("target").join("wasm");
    for watched in [
        "wit",
        "plugin-sdk",
        "plugins",
        "tests/fixtures",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    println!("cargo:rerun-if-env-changed=PORTCULLIS_ONLY_PLUGINS");

    let plugins = plugins(&root.join("plugins"));
    let only = std::env::var("PORTCULLIS_ONLY_PLUGINS").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|o| o.trim() == name))
    };
    let mut guests: Vec<(String, String, String, bool)> = plugins
        .iter()
        .map(|name| {
            let stem = name.replace('-', "_");
            let constant = stem.to_uppercase();
            (name.clone(), stem, constant, selected(name))
        })
        .collect();
    guests.extend(
        FIXTURES
            .iter()
            .map(|(p, s, c)| (p.to_string(), s.to_string(), c.to_string(), true)),
    );

    let packages: Vec<&str> = guests
        .iter()
        .filter(|g| g.3)
        .map(|g| g.0.as_str())
        .collect();
    cargo_build(&root, &target_dir, &packages, &[]);
    let release = target_dir.join("wasm32-wasip2").join("release");
    let mut constants = String::new();
    for (_, stem, constant, built) in &guests {
        let dest = out.join(format!("{stem}.wasm"));
        let from = release.join(format!("{stem}.wasm"));
        if *built || from.exists() {
            copy(&from, &dest);
        }
        constants.push_str(&format!(
            "/// `{stem}.wasm`, built for wasm32-wasip2.\npub const {constant}: &str = {:?};\n",
            dest.display().to_string()
        ));
    }
    // The same stamp plugin, built to behave differently: for hot reload tests.
    cargo_build(&root, &target_dir, &["stamp"], &["--features", "stamp/v2"]);
    let dest = out.join("stamp_v2.wasm");
    copy(&release.join("stamp.wasm"), &dest);
    constants.push_str(&format!(
        "/// `stamp.wasm` built with feature `v2`.\npub const STAMP_V2: &str = {:?};\n",
        dest.display().to_string()
    ));
    std::fs::write(out.join("fixtures.rs"), constants).expect("write fixtures.rs");
}

/// The names of the plugin crates: the directories under `plugins/` with a
/// `Cargo.toml`, sorted.
fn plugins(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

fn cargo_build(root: &Path, target_dir: &Path, packages: &[&str], extra: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(extra);
    // What the outer cargo set for this build script must not leak into the
    // guest build (flags for the host, clippy's wrapper, the outer target).
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the wasm fixtures");
    if !status.success() {
        panic!(
            "building the wasm fixtures failed ({status}); is the target installed? run `rustup target add wasm32-wasip2`"
        );
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}
