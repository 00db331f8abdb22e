#!/usr/bin/env bash
# Flare's collectives against torch.distributed's gloo backend (CPU), side by side in one run.
# Same sizes, same world sizes, ranks as processes on this machine, float32, the same timing
# (warm-up, barrier, mean of the slowest rank). Prints nccl-tests-style busbw and the ratios.
#
# Usage: benches/vs_gloo.sh [SIZES] [WORLD_SIZES] [ITERS]
#   default: benches/vs_gloo.sh 64K,1M,16M "2 4" 30
# torch (CPU use only) is installed once into ~/.cache/flare/torch-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${1:-64K,1M,16M}"
worlds="${2:-2 4}"
iters="${3:-30}"
venv="${FLARE_TORCH_VENV:-$HOME/.cache/flare/torch-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch numpy
fi
cargo build --release -q -p flare-cli
flare=target/release/flare
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), $(nproc) cores, iters=$iters"
printf "%-10s %3s %10s %12s %12s %12s %10s %10s\n" op n bytes gloo_busbw ring_busbw shm_busbw ring/gloo shm/gloo
for n in $worlds; do
    for op in all_reduce all_gather broadcast; do
        flag="${op//_/-}"
        "$venv/bin/python" benches/gloo_bench.py --op "$op" --world-size "$n" --sizes "$sizes" --iters "$iters" >"$tmp/gloo"
        $flare bench collectives --op "$flag" --backend ring --world-size "$n" --sizes "$sizes" --iters "$iters" --json >"$tmp/ring"
        $flare bench collectives --op "$flag" --backend shm --world-size "$n" --sizes "$sizes" --iters "$iters" --json >"$tmp/shm"
        python3 - "$tmp/gloo" "$tmp/ring" "$tmp/shm" <<'PY'
import json, sys
rows = [[json.loads(l) for l in open(f) if l.strip()] for f in sys.argv[1:]]
for g, r, s in zip(*rows):
    print(f"{g['op']:<10} {g['world_size']:>3} {g['bytes']:>10} {g['busbw_gbps']:>12.3f} {r['busbw_gbps']:>12.3f} "
          f"{s['busbw_gbps']:>12.3f} {r['busbw_gbps']/g['busbw_gbps']:>9.2f}x {s['busbw_gbps']/g['busbw_gbps']:>9.2f}x")
PY
    done
done
