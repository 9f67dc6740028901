#!/usr/bin/env python3
"""How long a canary rollback takes to reach every request, under load.

Starts the release gateway (target/release/portcullis) in front of the
bundled echo upstream (target/debug/echo-upstream), with one route whose
plugin (the `misbehave` test fixture, doing nothing) has a canary at 50%,
sticky by a header: the candidate's config traps on /api/boom. CLIENTS
threads send requests as random users over keep-alive connections, one in
BOOM of them to /api/boom, for two seconds: the candidate fails about 5%
of its requests, over its `max_failure_ratio` of 1%, and the first of them
rolls it back. Then it reports:

- the failed requests (all of them the candidate's, before its rollback);
- `drained_us` from GET /rollouts: the time from the rollback decision to
  the end of the last request the candidate was serving then (after it,
  the stable version serves everything; requests that start after the
  decision never reach the candidate);
- whether the candidate got any request after the decision.

Run from the repository root after `cargo build --release -p portcullis`,
`cargo build -p portcullis-tests --bin echo-upstream` and a test build
(which makes target/wasm/.../misbehave.wasm):

    python3 bench/rollback.py
"""

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

CLIENTS = 16
BOOM = 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def main():
    work = tempfile.mkdtemp(prefix="portcullis-rollback-")
    os.mkdir(os.path.join(work, "plugins"))
    shutil.copy(
        os.path.join(ROOT, "target/wasm/wasm32-wasip2/release/misbehave.wasm"),
        os.path.join(work, "plugins/misbehave.wasm"),
    )
    upstream, port, admin = free_port(), free_port(), free_port()
    with open(os.path.join(work, "portcullis.toml"), "w") as f:
        f.write(f"""
state_directory = "state"
[[listeners]]
address = "127.0.0.1:{port}"
[plugins]
directory = "plugins"
watch = false
[log]
access_log = false
level = "warn"
[admin]
address = "127.0.0.1:{admin}"
[upstreams.echo]
servers = ["127.0.0.1:{upstream}"]
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "echo"
[[routes.plugins]]
name = "misbehave"
[routes.plugins.config]
mode = "none"
[routes.plugins.canary]
config = {{ mode = "trap", only_path = "/api/boom" }}
steps = [50]
step_ms = 86400000
sticky = "header:x-user"
min_requests = 5
""")
    procs = [
        subprocess.Popen([os.path.join(ROOT, "target/debug/echo-upstream"), f"127.0.0.1:{upstream}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([os.path.join(ROOT, "target/release/portcullis"), "run", "--config",
                          os.path.join(work, "portcullis.toml")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_port(upstream)
        wait_port(port)
        wait_port(admin)
        run(port, admin)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def rollout(admin):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/rollouts")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body["rollouts"][0]


def run(port, admin):
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok = failed = 0
        while not stop.is_set():
            path = "/api/boom" if random.randrange(BOOM) == 0 else "/api/ok"
            conn.request("GET", path, headers={"x-user": f"u{random.randrange(1000)}"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                ok += 1
            else:
                failed += 1
        with lock:
            counts["ok"] += ok
            counts["failed"] += failed

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    final = rollout(admin)
    time.sleep(0.5)
    later = rollout(admin)
    print(f"load: {CLIENTS} clients, 1 in {BOOM} requests to /api/boom:"
          f" {counts['ok']} served, {counts['failed']} failed")
    print(f"phase: {final['phase']}, reason: {final['reason']}")
    print(f"candidate: {final['candidate']}; stable: {final['stable']}")
    print(f"candidate requests counted by the end of the load: {final['candidate']['requests']}"
          f" (the reason counts those at the decision), half a second later: {later['candidate']['requests']}")
    print(f"drained_us (the rollback decision to the end of the candidate's last request in flight): "
          f"{final['drained_us']}")

if __name__ == "__main__":
    main()
