//! Builds the guest fixtures (the example plugins and the deliberately bad
//! ones) for `wasm32-wasip2` and exposes their paths as constants.
//!
//! The nested `cargo` uses its own target directory (`target/wasm`), so it
//! never waits on the build lock of the `cargo` that runs this script.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, output file stem, constant)
const FIXTURES: &[(&str, &str, &str)] = &[
    ("key-auth", "key_auth", "KEY_AUTH"),
    ("stamp", "stamp", "STAMP_V1"),
    ("misbehave", "misbehave", "MISBEHAVE"),
    ("wrong-world", "wrong-world", "WRONG_WORLD"),
    ("shape-probe", "shape_probe", "SHAPE_PROBE"),
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
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let packages: Vec<&str> = FIXTURES.iter().map(|f| f.0).collect();
    cargo_build(&root, &target_dir, &packages, &[]);
    let release = target_dir.join("wasm32-wasip2").join("release");
    let mut constants = String::new();
    for (_, stem, constant) in FIXTURES {
        let dest = out.join(format!("{stem}.wasm"));
        copy(&release.join(format!("{stem}.wasm")), &dest);
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
