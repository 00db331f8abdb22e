#!/usr/bin/env bash
# Flare's Trainer step against PyTorch DDP (gloo) on the same MLP and global batch, side by
# side in one run: forward, backward, gradient all-reduce (what was not hidden), optimizer,
# whole step, at each world size; one compute thread per rank on both sides.
#
# Each round runs torch, Flare (explicit backprop) and Flare (candle autograd), alternating;
# medians over ROUNDS are compared.
#
# Usage: benches/vs_torch_ddp.sh [RANKS] [WIDTHS] [BATCH] [STEPS] [ROUNDS]
#   default: benches/vs_torch_ddp.sh 1,2 784,1024,1024,10 256 30 3
# torch (CPU use only) is installed once into ~/.cache/flare/torch-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="${1:-1,2}"
widths="${2:-784,1024,1024,10}"
batch="${3:-256}"
steps="${4:-30}"
rounds="${5:-3}"
. benches/torch_env.sh
echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), $(nproc) cores, MLP $widths, global batch $batch, Adam, $steps steps, median of $rounds rounds"
for _ in $(seq "$rounds"); do
    "$venv/bin/python" benches/ddp_torch.py --ranks "$ranks" --widths "$widths" --batch "$batch" --steps "$steps" >>"$tmp/torch"
    $flare bench train --ranks "$ranks" --widths "$widths" --batch "$batch" --steps "$steps" --json >>"$tmp/flare"
    $flare bench train --ranks "$ranks" --widths "$widths" --batch "$batch" --steps "$steps" --autograd --json >>"$tmp/autograd"
done
python3 - "$tmp/torch" "$tmp/flare" "$tmp/autograd" "$batch" <<'PY'
import json, statistics, sys
keys = ["forward_ms", "backward_ms", "allreduce_ms", "optimizer_ms", "step_ms"]
def load(path):
    by = {}
    for line in open(path):
        r = json.loads(line)
        by.setdefault(r["ranks"], []).append(r)
    return {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in by.items()}
torch, flare, auto = (load(p) for p in sys.argv[1:4])
batch = int(sys.argv[4])
impls = (("torch DDP gloo", torch), ("flare", flare), ("flare autograd", auto))
print(f"{'impl':<15} {'ranks':>5} " + " ".join(f"{k[:-3]:>10}" for k in keys) + f" {'samples/s':>10}")
for n in sorted(torch):
    for name, t in impls:
        r = t[n]
        print(f"{name:<15} {n:>5} " + " ".join(f"{r[k]:>10.2f}" for k in keys) + f" {batch / r['step_ms'] * 1e3:>10.0f}")
print()
first = min(torch)
for n in sorted(torch):
    print(f"ranks {n}: step time torch/flare {torch[n]['step_ms'] / flare[n]['step_ms']:.2f}x "
          f"(autograd {torch[n]['step_ms'] / auto[n]['step_ms']:.2f}x); "
          f"speed-up over {first} rank: torch {torch[first]['step_ms'] / torch[n]['step_ms']:.2f}x, "
          f"flare {flare[first]['step_ms'] / flare[n]['step_ms']:.2f}x")
PY
