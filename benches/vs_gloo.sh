#!/usr/bin/env bash
# Flare's collectives against torch.distributed's gloo backend (CPU), side by side in one run.
# Same sizes, same world sizes, ranks as processes on this machine, float32, the same timing
# (warm-up, barrier, mean of the slowest rank). Prints nccl-tests-style busbw and the ratios.
#
# A shared 2-core machine is noisy, so each case runs ROUNDS times, alternating the three, and
# the medians are compared.
#
# Usage: benches/vs_gloo.sh [SIZES] [WORLD_SIZES] [ITERS] [ROUNDS]
#   default: benches/vs_gloo.sh 64K,1M,16M "2 4" 30 3
# torch (CPU use only) is installed once into ~/.cache/flare/torch-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${1:-64K,1M,16M}"
worlds="${2:-2 4}"
iters="${3:-30}"
rounds="${4:-3}"
. benches/torch_env.sh
echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), $(nproc) cores, iters=$iters, median of $rounds rounds"
printf "%-14s %3s %10s %12s %12s %12s %10s %10s\n" op n bytes gloo_busbw ring_busbw shm_busbw ring/gloo shm/gloo
for n in $worlds; do
    for op in all_reduce all_gather broadcast; do
        flag="${op//_/-}"
        : >"$tmp/gloo"; : >"$tmp/ring"; : >"$tmp/shm"
        for _ in $(seq "$rounds"); do
            "$venv/bin/python" benches/gloo_bench.py --op "$op" --world-size "$n" --sizes "$sizes" --iters "$iters" >>"$tmp/gloo"
            $flare bench collectives --op "$flag" --backend ring --world-size "$n" --sizes "$sizes" --iters "$iters" --json >>"$tmp/ring"
            $flare bench collectives --op "$flag" --backend shm --world-size "$n" --sizes "$sizes" --iters "$iters" --json >>"$tmp/shm"
        done
        python3 - "$tmp/gloo" "$tmp/ring" "$tmp/shm" <<'PY'
import json, statistics, sys
def medians(path):
    by = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            by.setdefault(r["bytes"], []).append(r["busbw_gbps"])
    return {b: statistics.median(v) for b, v in by.items()}
g, r, s = (medians(p) for p in sys.argv[1:])
op, n = json.loads(open(sys.argv[1]).readline())["op"], json.loads(open(sys.argv[1]).readline())["world_size"]
for b in sorted(g):
    print(f"{op:<14} {n:>3} {b:>10} {g[b]:>12.3f} {r[b]:>12.3f} {s[b]:>12.3f} {r[b]/g[b]:>9.2f}x {s[b]/g[b]:>9.2f}x")
PY
    done
done
