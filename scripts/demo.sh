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

echo "==> building the gateway, the echo upstream and the demo certificate maker"
cargo build -p portcullis --bin portcullis -p portcullis-tests --bin echo-upstream --bin demo-cert
target/debug/demo-cert examples/certs

echo "==> signing the modules (examples/portcullis.toml requires signatures)"
if [ ! -f examples/keys/demo-signing.key ]; then
    target/debug/portcullis keygen --out examples/keys/demo-signing
fi
for crate in "${plugins[@]}"; do
    target/debug/portcullis sign --key examples/keys/demo-signing.key "examples/plugins/${crate//-/_}.wasm"
done

# Two of them: the example's upstream group balances over both.
target/debug/echo-upstream 127.0.0.1:9000 &
echo_pids=$!
target/debug/echo-upstream 127.0.0.1:9001 &
echo_pids="$echo_pids $!"
trap 'kill $echo_pids 2>/dev/null || true' EXIT

cat <<'TRY'

==> Portcullis is starting on http://127.0.0.1:8080 and https://127.0.0.1:8443, admin and
    dashboard on http://127.0.0.1:9901 (Ctrl-C to stop).
    Try (from the repository root):

  curl -i localhost:8080/hello                                          # public: 200
  curl -i --cacert examples/certs/ca.pem https://localhost:8443/hello   # HTTPS, HTTP/2: 200, x-forwarded-proto https
  curl -i --http1.1 --cacert examples/certs/ca.pem https://localhost:8443/hello  # HTTPS, HTTP/1.1
  curl -i -N -H 'connection: upgrade' -H 'upgrade: websocket' -H 'sec-websocket-version: 13' \
       -H 'sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==' localhost:8080/hello/ws  # WebSocket: 101 (Ctrl-C to end)
  curl -i localhost:8080/api/me                                         # no key: 401
  curl -i -H 'x-api-key: demo-key' localhost:8080/api/me                # 200 with RateLimit headers
  curl -i -H 'x-api-key: demo-key' localhost:8080/api/tenants/globex/x  # another tenant: 403
  curl -i -H 'x-api-key: demo-key' 'localhost:8080/api/tenants/acme/orders?debug=1&page=2'
  curl -s -H 'x-api-key: demo-key' -H 'content-type: application/json' \
       -d '{"card":"4111 1111 1111 1111","email":"jane@example.com"}' \
       localhost:8080/api/tenants/acme/reflect                          # masked card and e-mail
  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{http_code} ' -H 'x-api-key: demo-key' localhost:8080/api/me; done
  for i in 1 2 3 4 5; do curl -s -o /dev/null -H 'x-api-key: wrong' localhost:8080/api/me; done   # one alert in the log
  curl -i -u alice:open-sesame localhost:8080/user/login                # Basic auth: 200
  curl -i -u alice:wrong localhost:8080/user/login                      # 401
  curl -i -H "authorization: Bearer $(cat examples/keys/partner.jwt)" localhost:8080/partners/orders  # JWT: 200
  curl -i -H "authorization: Bearer $(cat examples/keys/viewer.jwt)" localhost:8080/partners/orders   # 403
  curl -i -H "authorization: Bearer $(cat examples/keys/expired.jwt)" localhost:8080/partners/orders  # 401
  curl -i localhost:8080/catalog/v1/items                               # Deprecation, Sunset, Link
  curl -i localhost:8080/catalog/v0/items                               # retired: 410

  The dashboard: http://127.0.0.1:9901/ (metrics, policies, reloads, alerts, upstreams)
  curl -s localhost:9901/metrics | grep portcullis_requests_total       # Prometheus
  curl -s localhost:9901/plugins                                        # modules, SHA-256, load times
  curl -s localhost:9901/generations                                    # reload history, refusals and why
  curl -s localhost:9901/audit                                          # the audit trail of policy changes
  curl -s -X POST localhost:9901/reload                                 # reload the config now

  Hot reload: rebuild a module, sign it (target/debug/portcullis sign --key
  examples/keys/demo-signing.key <module>) and copy both into examples/plugins/
  while it runs; an unsigned module is refused. Edit examples/portcullis.toml
  (or `kill -HUP <pid>`) to reload the config.

TRY
target/debug/portcullis run --config examples/portcullis.toml
