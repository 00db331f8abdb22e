#!/usr/bin/env bash
# Runs `ray microbenchmark` (Ray 2.60.0 from PyPI) and `flare microbenchmark` one after the
# other on this machine and prints each case's rate side by side with the ratio Flare/Ray.
#
#   bash benches/vs_ray.sh                 # every case
#   FILTER="tasks" bash benches/vs_ray.sh  # only cases whose name contains "tasks"
#
# The Ray venv lives in ~/.cache/flare/ray-venv (override with RAY_VENV); outputs go to
# target/bench/ (ray.txt, flare.txt, ratios.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
RAY_VENV="${RAY_VENV:-$HOME/.cache/flare/ray-venv}"
FILTER="${FILTER:-}"
OUT=target/bench
mkdir -p "$OUT"

if ! "$RAY_VENV/bin/python" -c "import ray, numpy, grpc" 2>/dev/null; then
  [ -x "$RAY_VENV/bin/python" ] || python3 -m venv "$RAY_VENV"
  "$RAY_VENV/bin/pip" install -q "ray[client]==2.60.0" numpy
fi
cargo build --release -p flare-cli

echo "== ray $("$RAY_VENV/bin/python" -c 'import ray; print(ray.__version__)') microbenchmark" >&2
# Ray's own runner; TESTS_TO_RUN filters by substring like our --filter.
TESTS_TO_RUN="$FILTER" "$RAY_VENV/bin/ray" microbenchmark 2>/dev/null | grep " per second " | tee "$OUT/ray.txt"
"$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1 || true

echo "== flare microbenchmark" >&2
./target/release/flare microbenchmark --filter "$FILTER" 2>/dev/null | tee "$OUT/flare.txt"

python3 - "$OUT/ray.txt" "$OUT/flare.txt" <<'PY' | tee "$OUT/ratios.txt"
import re, sys
def load(path):
    rows = {}
    for line in open(path):
        m = re.match(r"(.*) per second ([0-9.e+]+) \+- ([0-9.e+]+)", line.strip())
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows
ray, flare = load(sys.argv[1]), load(sys.argv[2])
print(f"| case | Ray 2.60.0 /s | Flare /s | Flare / Ray |")
print(f"|---|---:|---:|---:|")
for name, (f, fsd) in flare.items():
    if name in ray:
        r, rsd = ray[name]
        print(f"| {name} | {r:,.2f} ± {rsd:,.2f} | {f:,.2f} ± {fsd:,.2f} | {f / r:,.1f}x |")
    else:
        print(f"| {name} | (not run) | {f:,.2f} ± {fsd:,.2f} | |")
PY
