#!/usr/bin/env bash
# The whole check, as CI runs it: formatting, lints (host and wasm32-wasip2),
# and every test. Needs the Rust toolchain (rustup + cargo); installs Chromium
# and chromedriver for the dashboard test (apt-get, as root) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
rustup component add rustfmt clippy

# The dashboard test (tests/tests/dashboard.rs) drives Debian's Chromium
# through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium and chromium-driver for the dashboard test" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
    else
        echo "error: the dashboard test needs Chromium and chromedriver; install them with:" >&2
        echo "    sudo apt-get install -y chromium chromium-driver" >&2
        exit 1
    fi
fi

# Disk: a full run writes about 4 GB under target/. CI builds once from
# scratch, so incremental compilation's caches (2 GB more) buy nothing.
export CARGO_INCREMENTAL=0
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((5 * 1024 * 1024)) ]; then
    echo "warning: $((free_kib / 1024)) MiB free under $(pwd); the build and tests" \
        "write about 4 GB to target/ and may fail with 'No space left on device'" >&2
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The guests, as they are really built. Same target directory as the test
# fixtures (tests/build.rs), so nothing is compiled twice.
guests=(-p portcullis-sdk -p stamp -p noop -p misbehave -p wrong-world -p shape-probe -p contract-0-2-0)
for plugin in plugins/*/Cargo.toml; do
    guests+=(-p "$(basename "$(dirname "$plugin")")")
done
cargo clippy --target wasm32-wasip2 --target-dir target/wasm "${guests[@]}" -- -D warnings
# Build first, then run under a bound: a test that hangs (it happened once,
# a deadlock in the shared store) fails the run with a message instead of
# holding CI until its own limit. The whole suite runs in minutes.
cargo test --workspace --no-run
limit=${PORTCULLIS_TEST_TIMEOUT:-30m}
status=0
timeout --kill-after=30s "$limit" cargo test --workspace || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "error: the tests did not finish within $limit (a hang?); the test named" \
        "'has been running for over 60 seconds' above is the one to look at" >&2
fi
exit "$status"
