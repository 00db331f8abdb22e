#!/usr/bin/env bash
# Environment stepping throughput: gymnasium 1.4.0 (from PyPI) against flare-rl, same envs,
# random actions, one process each, one after the other on this machine.
#
#   bash benches/vs_gymnasium.sh            # STEPS=200000 per case
#
# The venv lives in ~/.cache/flare/gym-venv (override with GYM_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
GYM_VENV="${GYM_VENV:-$HOME/.cache/flare/gym-venv}"
STEPS="${STEPS:-200000}"
if ! "$GYM_VENV/bin/python" -c "import gymnasium" 2>/dev/null; then
  python3 -m venv "$GYM_VENV"
  "$GYM_VENV/bin/pip" install -q "gymnasium==1.4.0"
fi
cargo build --release -p flare-cli
printf "| env | copies | gymnasium steps/s | Flare steps/s | Flare / gymnasium |\n|---|---:|---:|---:|---:|\n"
for env in CartPole-v1 Acrobot-v1 MountainCar-v0 MountainCarContinuous-v0 Pendulum-v1; do
  for n in 1 8; do
    gym=$("$GYM_VENV/bin/python" - "$env" "$n" "$STEPS" <<'PY'
import sys, time, gymnasium as gym
env_id, n, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if n == 1:
    env = gym.make(env_id); env.reset(seed=0); env.action_space.seed(0)
    t = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
else:
    env = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync"); env.reset(seed=0); env.action_space.seed(0)
    t = time.perf_counter()
    for _ in range(steps // n):
        env.step(env.action_space.sample())
print(steps / (time.perf_counter() - t))
PY
)
    fl=$(./target/release/flare rl bench --env "$env" --steps "$STEPS" --num-envs "$n" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['steps_per_second'])")
    python3 -c "print(f'| $env | $n | {float($gym):,.0f} | {float($fl):,.0f} | {float($fl)/float($gym):,.1f}x |')"
  done
done
