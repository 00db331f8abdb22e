#!/usr/bin/env bash
# Flare Tune's overhead against Ray Tune 2.60 (PyPI), side by side in one run: 200 one-report
# trials at 0.5 CPU each, and 20 trials of 100 reports under ASHA, on a 2-CPU cluster.
# Each case runs ROUNDS times, alternating; medians are compared.
#
# Usage: benches/vs_ray_tune.sh [ROUNDS]   (default 1: Ray's 200-trial case takes minutes)
# ray[tune]==2.60.0 is installed once into ~/.cache/flare/ray-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-1}"
venv="${FLARE_RAY_VENV:-$HOME/.cache/flare/ray-venv}"
if ! "$venv/bin/python" -c "import ray.tune" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "ray[tune]==2.60.0"
fi
cargo build --release -q -p flare-cli
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for case in trivial asha; do
    for _ in $(seq "$rounds"); do
        "$venv/bin/python" benches/ray_tune_bench.py --case "$case" 2>/dev/null | tail -n1 >>"$tmp/ray-$case"
        target/release/flare bench tune-overhead --case "$case" --json >>"$tmp/flare-$case"
    done
done
python3 - "$tmp" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
print(f"{'case':<8} {'ray tune s':>11} {'flare s':>9} {'ray/flare':>10}  trials/reports (ray | flare)")
for case in ("trivial", "asha"):
    ray = [json.loads(l) for l in open(os.path.join(d, f"ray-{case}"))]
    fl = [json.loads(l) for l in open(os.path.join(d, f"flare-{case}"))]
    r, f = statistics.median(x["wall_s"] for x in ray), statistics.median(x["wall_s"] for x in fl)
    print(f"{case:<8} {r:>11.3f} {f:>9.3f} {r / f:>9.1f}x  {ray[0]['trials']}/{ray[0]['reports']} | {fl[0]['trials']}/{fl[0]['reports']}")
PY
