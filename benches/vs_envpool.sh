#!/usr/bin/env bash
# CartPole-v1 env steps/s with 64 copies: gymnasium 1.4.0's SyncVectorEnv, EnvPool 1.2.5 (both
# from PyPI) and `flare rl bench --num-envs 64`, one after the other on this machine. Random
# actions; the Python sides draw all actions before the clock starts, Flare draws its own in
# the loop (counted against it). EnvPool runs twice: with its default thread pool (all cores)
# and with one thread, as Flare's vector env and SyncVectorEnv are single-threaded.
#
#   bash benches/vs_envpool.sh            # STEPS=2000000, NUM_ENVS=64
#
# The venv lives in ~/.cache/flare/rl-venv (override with RL_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
RL_VENV="${RL_VENV:-$HOME/.cache/flare/rl-venv}"
STEPS="${STEPS:-2000000}"
NUM_ENVS="${NUM_ENVS:-64}"
if ! "$RL_VENV/bin/python" -c "import envpool, gymnasium" 2>/dev/null; then
  python3 -m venv "$RL_VENV"
  "$RL_VENV/bin/pip" install -q "gymnasium==1.4.0" "envpool==1.2.5"
fi
cargo build --release -q -p flare-cli

py_bench() {
  "$RL_VENV/bin/python" - "$1" "$NUM_ENVS" "$STEPS" <<'PY'
import sys, time
import numpy as np
kind, n, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rounds = steps // n
actions = np.random.default_rng(0).integers(0, 2, size=(rounds, n))
if kind == "gymnasium":
    import gymnasium as gym
    env = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")
    env.reset(seed=0)
else:
    import envpool
    threads = 1 if kind == "envpool-1" else 0
    env = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=n, batch_size=n, num_threads=threads, seed=0)
    env.reset()
t = time.perf_counter()
for k in range(rounds):
    env.step(actions[k])
print(rounds * n / (time.perf_counter() - t))
PY
}

gym=$(py_bench gymnasium)
ep=$(py_bench envpool)
ep1=$(py_bench envpool-1)
fl=$(./target/release/flare rl bench --env CartPole-v1 --steps "$STEPS" --num-envs "$NUM_ENVS" --json \
  | python3 -c "import json,sys; print(json.load(sys.stdin)['steps_per_second'])")
python3 - "$gym" "$ep" "$ep1" "$fl" "$NUM_ENVS" <<'PY'
import sys
gym, ep, ep1, fl, n = map(float, sys.argv[1:6])
print(f"| CartPole-v1 x{int(n)} | steps/s | Flare / it |")
print("|---|---:|---:|")
print(f"| gymnasium SyncVectorEnv | {gym:,.0f} | {fl / gym:,.1f}x |")
print(f"| EnvPool, default threads | {ep:,.0f} | {fl / ep:,.2f}x |")
print(f"| EnvPool, 1 thread | {ep1:,.0f} | {fl / ep1:,.2f}x |")
print(f"| Flare VectorEnv (1 thread) | {fl:,.0f} | 1.00x |")
PY
