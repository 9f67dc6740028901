#!/usr/bin/env bash
# Runs Portcullis on examples/portcullis.toml with the plugins of plugins/ and
# the bundled echo upstream. Needs only the Rust toolchain (rustup + cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2

echo "==> building the plugins for wasm32-wasip2"
plugins=()
for crate in plugins/*/Cargo.toml; do
    plugins+=("$(basename "$(dirname "$crate")")")
done
cargo build --release --target wasm32-wasip2 --target-dir target/wasm "${plugins[@]/#/-p}"
mkdir -p examples/plugins
for crate in "${plugins[@]}"; do
    plugin=${crate//-/_}
    # Write next to the live file, then rename: the gateway never sees half a module.
    cp "target/wasm/wasm32-wasip2/release/$plugin.wasm" "examples/plugins/.$plugin.wasm.tmp"
    mv "examples/plugins/.$plugin.wasm.tmp" "examples/plugins/$plugin.wasm"
done

echo "==> building the gateway and the echo upstream"
cargo build -p portcullis --bin portcullis -p portcullis-tests --bin echo-upstream

target/debug/echo-upstream 127.0.0.1:9000 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT

cat <<'TRY'

==> Portcullis is starting on http://127.0.0.1:8080 (Ctrl-C to stop). Try:

  curl -i http://127.0.0.1:8080/hello                                  # public route: 200
  curl -i http://127.0.0.1:8080/api/orders                             # no key: 401
  curl -i -H 'x-api-key: wrong' http://127.0.0.1:8080/api/orders       # bad key: 401
  curl -i -H 'x-api-key: demo-key' http://127.0.0.1:8080/api/orders    # 200, key stripped upstream
  curl -i 'http://127.0.0.1:8080/api/orders?apikey=ops-key&page=2'     # key in the query: 200
  curl -i -X DELETE http://127.0.0.1:8080/api                          # still needs a key: 401

  Hot reload: rebuild or copy a module into examples/plugins/ while it runs;
  edit examples/portcullis.toml (or `kill -HUP <pid>`) to reload the config.

TRY
target/debug/portcullis run --config examples/portcullis.toml
