#!/usr/bin/env bash
# Cross-node object transfer and task throughput, Flare against Ray 2.60 (PyPI), side by side:
# a head with no CPUs and two 2-CPU worker nodes as real processes on this machine, the
# benchmark as the driver; a fresh 1 GiB object pulled by a task on node n1 (median of 5), and
# 20,000 no-op tasks on one node, then on both. Ray's cluster uses `ray start` (it stops every
# Ray process on this machine at the end: `ray stop --force`).
#
# Usage: benches/vs_ray_cluster.sh [TASKS]
set -euo pipefail
cd "$(dirname "$0")/.."
tasks="${1:-20000}"
venv="${FLARE_RAY_VENV:-$HOME/.cache/flare/ray-venv}"
if ! "$venv/bin/python" -c "import ray, numpy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "ray[tune]==2.60.0"
fi
cargo build --release -q -p flare-cli
ray_json="$("$venv/bin/python" benches/ray_cluster_bench.py --tasks "$tasks" 2>/dev/null | tail -n1)"
flare_json="$(target/release/flare bench cluster --size 1G --rounds 5 --tasks "$tasks" | tail -n1)"
python3 - "$ray_json" "$flare_json" <<'PY'
import json, sys
ray, flare = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'metric':<26} {'ray':>12} {'flare':>12} {'flare/ray':>10}")
for k, label in (("gb_per_s", "1 GiB pull, GB/s"), ("tasks_per_s_one_node", "tasks/s, 1 node"),
                 ("tasks_per_s_two_nodes", "tasks/s, 2 nodes"), ("two_over_one", "2 nodes / 1 node")):
    print(f"{label:<26} {ray[k]:>12.3f} {flare[k]:>12.3f} {flare[k] / ray[k]:>9.2f}x")
PY
