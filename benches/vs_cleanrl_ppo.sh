#!/usr/bin/env bash
# PPO time-to-solve on CartPole-v1: `flare rl train --algo ppo` against CleanRL's ppo.py as
# restated in benches/cleanrl_ppo.py (PyTorch and gymnasium 1.4.0 from PyPI, in the torch venv
# of benches/torch_env.sh), same hyperparameters, one seed after the other, each side alone on
# the machine. Both stop once the mean return over the last 100 episodes reaches 475; the time
# is the whole process, start to exit (imports and startup included), by this script's clock.
#
#   bash benches/vs_cleanrl_ppo.sh          # SEEDS="1 2 3 4 5"
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/torch_env.sh
SEEDS="${SEEDS:-1 2 3 4 5}"
if ! "$venv/bin/python" -c "import gymnasium" 2>/dev/null; then
  "$venv/bin/pip" install -q "gymnasium==1.4.0"
fi
now() { date +%s.%N; }
printf "| seed | CleanRL (torch) steps | CleanRL s | Flare steps | Flare s | Flare / CleanRL time |\n|---:|---:|---:|---:|---:|---:|\n"
for s in $SEEDS; do
  t=$(now); c=$("$venv/bin/python" benches/cleanrl_ppo.py --seed "$s" | tail -1); ct=$(python3 -c "print($(now) - $t)")
  t=$(now); f=$("$flare" rl train --algo ppo --env CartPole-v1 --seed "$s" --json | tail -1); ft=$(python3 -c "print($(now) - $t)")
  python3 - "$s" "$c" "$ct" "$f" "$ft" <<'PY'
import json, sys
seed, c, ct, f, ft = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), float(sys.argv[5])
mark = lambda r: "" if r["solved"] else " (not solved)"
print(f"| {seed} | {c['env_steps']:,}{mark(c)} | {ct:.1f} | {f['env_steps']:,}{mark(f)} | {ft:.1f} | {ft / ct:.2f} |")
PY
done
