#!/usr/bin/env bash
# The whole check, as CI runs it: formatting, lints (host and wasm32-wasip2),
# and every test. Needs only the Rust toolchain (rustup + cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
rustup component add rustfmt clippy

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The guests, as they are really built. Same target directory as the test
# fixtures (tests/build.rs), so nothing is compiled twice.
guests=(-p portcullis-sdk -p stamp -p misbehave -p wrong-world -p shape-probe -p contract-0-2-0)
for plugin in plugins/*/Cargo.toml; do
    guests+=(-p "$(basename "$(dirname "$plugin")")")
done
cargo clippy --target wasm32-wasip2 --target-dir target/wasm "${guests[@]}" -- -D warnings
cargo test --workspace
