#!/usr/bin/env bash
# Flare's GPU tests and benchmarks on a lent GPU machine, in one call.
#
# The GPU machine has no Rust toolchain and no network, so this runs in two halves:
#   scripts/gpu-check.sh prepare   here: builds the `flare` binary, the GPU test binaries and
#                                  (with FLARE_GPU_CHECK_CUDA=1) the candle-CUDA test binary,
#                                  strips them and packs them into target/gpu-check/bundle.tar.gz
#   scripts/gpu-check.sh run       there: sets up CUDA/NCCL from Python's site-packages, runs
#                                  every GPU test and benchmark, writes results under $OUT
# With the device tool: run `prepare` here, then
#   run(command="bash scripts/gpu-check.sh run", carry=["target/gpu-check"], timeout_s=500)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check

# Copies the test executable of target NAME from cargo's JSON messages on stdin to bin/DEST.
copy_test_bin() {
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        shutil.copy(m["executable"], sys.argv[2])
' "$1" "$dir/bin/$2"
}

prepare() {
    rm -rf "$dir" && mkdir -p "$dir/bin"
    cargo build --release -q -p flare-cli
    cp target/release/flare "$dir/bin/flare"
    # Test binaries: cargo prints their paths as JSON.
    cargo test --release -q -p flare-gpu -p flare-collectives --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        if (m["target"]["kind"] == ["lib"] and name == "flare_gpu") or name in ("nccl", "collectives"):
            shutil.copy(m["executable"], "'"$dir"'/bin/test-" + name)
'
    if [ "${FLARE_GPU_CHECK_CUDA:-0}" = 1 ]; then
        scripts/build-cuda.sh test-bin -q -p flare-collectives --test nccl --message-format=json 2>/dev/null | copy_test_bin nccl test-nccl-cuda
        # Training on CUDA through the Trainer, checked against torch and the CPU run.
        scripts/build-cuda.sh test-bin -q -p flare-train --test gpu --message-format=json 2>/dev/null | copy_test_bin gpu test-train-cuda
        # SAC's candle learner on CUDA (the same test as on the CPU; the device is picked at run time).
        scripts/build-cuda.sh test-bin -q -p flare-rl --test sac --message-format=json 2>/dev/null | copy_test_bin sac test-sac-cuda
        # PPO's and DQN's learner actors on the GPU the scheduler assigns (they must report cuda:0).
        scripts/build-cuda.sh test-bin -q -p flare-rl --test learner_actor --message-format=json 2>/dev/null |
            copy_test_bin learner_actor test-rl-learner-cuda
    fi
    # The machine has no ../shared: the training oracle travels in the bundle.
    oracle=../shared/oracles/train
    if [ -d "$oracle" ]; then
        mkdir -p "$dir/bin/oracle-train"
        cp "$oracle"/{trajectories.json,datasets.safetensors,init_weights.safetensors,a_sgd_momentum_final.safetensors,b_adam_final.safetensors} "$dir/bin/oracle-train/"
    fi
    strip "$dir"/bin/flare "$dir"/bin/test-*
    tar -C "$dir" -czf "$dir/bundle.tar.gz" bin
    rm -rf "$dir/bin"
    ls -la "$dir"
}

run() {
    out="${OUT:-$PWD/gpu-check-out}"
    mkdir -p "$out"
    work="$(mktemp -d)"
    tar -C "$work" -xzf "$dir/bundle.tar.gz"
    # CUDA 13 user-space libraries and NCCL live in Python's site-packages/nvidia/*/lib.
    site="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)"
    libs=""
    if [ -n "$site" ]; then
        for d in $(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null); do libs="$libs:$d"; done
        nccl="$(find "$site/nvidia" -name 'libnccl.so.2*' 2>/dev/null | head -n1 || true)"
        # cudarc looks for libnccl.so; runtime NCCL ships only libnccl.so.2.
        mkdir -p "$work/lib"
        [ -n "$nccl" ] && ln -sf "$nccl" "$work/lib/libnccl.so"
    fi
    export LD_LIBRARY_PATH="$work/lib$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export FLARE_REQUIRE_GPU=1 RUST_BACKTRACE=1
    status=0
    step() { # name, command...
        local name="$1"; shift
        echo "== $name: $*" | tee -a "$out/summary.txt"
        if "$@" >"$out/$name.txt" 2>&1; then echo "   ok" | tee -a "$out/summary.txt"
        else echo "   FAILED (rc=$?)" | tee -a "$out/summary.txt"; tail -n 30 "$out/$name.txt"; status=1; fi
    }
    b="$work/bin"
    step nvidia-smi nvidia-smi
    step gpus "$b/flare" gpus
    step gpus-json "$b/flare" gpus --json
    step test-gpu "$b/test-flare_gpu" --test-threads=1
    step test-nccl "$b/test-nccl" --test-threads=1 --nocapture
    if [ -x "$b/test-nccl-cuda" ]; then
        step test-nccl-cuda "$b/test-nccl-cuda" --test-threads=1 --nocapture
    else
        echo "== test-nccl-cuda: not in the bundle (prepare with FLARE_GPU_CHECK_CUDA=1)" | tee -a "$out/summary.txt"
    fi
    if [ -x "$b/test-train-cuda" ]; then
        FLARE_TRAIN_ORACLE="$b/oracle-train" step test-train-cuda "$b/test-train-cuda" --test-threads=1 --nocapture
    else
        echo "== test-train-cuda: not in the bundle (prepare with FLARE_GPU_CHECK_CUDA=1)" | tee -a "$out/summary.txt"
    fi
    if [ -x "$b/test-sac-cuda" ]; then
        step test-sac-cuda "$b/test-sac-cuda" --test-threads=1 --nocapture
    fi
    if [ -x "$b/test-rl-learner-cuda" ]; then
        step test-rl-learner-cuda "$b/test-rl-learner-cuda" --test-threads=1 --nocapture
    fi
    for op in all-reduce all-gather broadcast; do
        step "bench-nccl-$op" "$b/flare" bench collectives --op "$op" --backend nccl --world-size 1 \
            --sizes 1M,16M,256M,1G --iters 50 --json
    done
    # Data-parallel step time on the CPU with more cores (the GPU host has 16), for reference.
    step bench-train-cpu "$b/flare" bench train --ranks 1,2,4,8 --steps 20 --json
    # The CPU backends on a 16-core host, for reference.
    step bench-shm-8 "$b/flare" bench collectives --backend shm --world-size 8 --sizes 1M,16M,256M --iters 20 --json
    step bench-ring-8 "$b/flare" bench collectives --backend ring --world-size 8 --sizes 1M,16M,256M --iters 20 --json
    cat "$out/summary.txt"
    rm -rf "$work"
    return $status
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh prepare|run" >&2; exit 2 ;;
esac
