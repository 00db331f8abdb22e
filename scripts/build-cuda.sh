#!/usr/bin/env bash
# Builds or checks Flare with candle on CUDA (`--features cuda,nccl`) on a machine without a
# CUDA toolkit, as ../shared/GPU.md describes:
#   1. nvcc and the CUDA 13 libraries come from PyPI's cuda-toolkit wheels into a venv;
#   2. a CUDA root of symlinks gives them the unversioned names linking needs, plus a link-time
#      libcuda.so from Debian's libcuda1 package (downloaded, not installed) and NCCL's wheel;
#   3. cargo runs with CUDA_HOME pointing at that root.
# The toolkit and the target dir live under ~/.cache/flare so nvcc runs once per machine.
#
# Usage: scripts/build-cuda.sh check               # cargo check --workspace --all-targets --features cuda,nccl
#        scripts/build-cuda.sh build [ARGS...]     # cargo build --release --features cuda,nccl ARGS
#        scripts/build-cuda.sh test-bin [ARGS...]  # cargo test --features cuda,nccl --no-run ARGS
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
shift || true

cache="${FLARE_CUDA_CACHE:-$HOME/.cache/flare/cuda}"
venv="$cache/venv"
root="$cache/root"
mkdir -p "$cache"

if [ ! -x "$venv/bin/nvcc" ] && [ ! -e "$root/bin/nvcc" ]; then
    echo "build-cuda: installing the CUDA 13.0 toolkit wheels into $venv (about 1.2 GB, once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.0.3.0"
fi

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cu="$site/nvidia/cu13"
if [ ! -d "$cu" ]; then
    echo "build-cuda: $cu is missing; remove $venv and run again" >&2
    exit 1
fi

if [ ! -e "$root/.done" ]; then
    rm -rf "$root"
    mkdir -p "$root/lib"
    for d in bin include nvvm; do ln -s "$cu/$d" "$root/$d"; done
    for l in cublas cublasLt cudart nvrtc; do
        f="$(ls "$cu"/lib/lib$l.so.13* | head -n1)"
        ln -s "$f" "$root/lib/lib$l.so"
        ln -sf "$f" "$root/lib/lib$l.so.13"
    done
    f="$(ls "$cu"/lib/libcurand.so.10* | head -n1)"
    ln -s "$f" "$root/lib/libcurand.so"
    ln -sf "$f" "$root/lib/libcurand.so.10"
    touch "$root/.done"
fi

# Linking (build, test-bin) also needs NCCL and a libcuda.so; `check` needs neither.
if [ "$mode" != check ] && [ ! -e "$root/.link-done" ]; then
    "$venv/bin/pip" install -q nvidia-nccl-cu13
    nccl="$(ls "$site"/nvidia/nccl/lib/libnccl.so.2* 2>/dev/null | head -n1 || true)"
    [ -n "$nccl" ] || { echo "build-cuda: the nvidia-nccl-cu13 wheel has no libnccl.so.2" >&2; exit 1; }
    ln -sf "$nccl" "$root/lib/libnccl.so"
    ln -sf "$nccl" "$root/lib/libnccl.so.2"
    # libcuda.so for link time only (the driver provides the real one on a GPU machine).
    tmp="$(mktemp -d)"
    # libcuda1 is in Debian's non-free component: read it through a private apt list so the
    # system's sources stay as they are.
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm non-free" >"$tmp/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=- -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
    (cd "$tmp" && apt-get "${apt_opts[@]}" update >/dev/null 2>&1 && apt-get "${apt_opts[@]}" download libcuda1 >/dev/null 2>&1) || {
        echo "build-cuda: could not download Debian's libcuda1 (non-free) for link time" >&2
        exit 1
    }
    dpkg-deb -x "$tmp"/libcuda1_*.deb "$tmp/x"
    so="$(find "$tmp/x" -name 'libcuda.so.1*' | head -n1)"
    cp "$so" "$root/lib/libcuda.so.1"
    ln -sf libcuda.so.1 "$root/lib/libcuda.so"
    mkdir -p "$root/lib/stubs"
    ln -sf ../libcuda.so.1 "$root/lib/stubs/libcuda.so"
    rm -rf "$tmp"
    touch "$root/.link-done"
fi

export CUDA_HOME="$root" CUDA_PATH="$root" CUDA_ROOT="$root"
export PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="${FLARE_CUDA_TARGET_DIR:-$cache/target}"

case "$mode" in
    check) exec cargo check --workspace --all-targets --features cuda,nccl "$@" ;;
    build) exec cargo build --release --features cuda,nccl "$@" ;;
    # Test binaries (debug profile: it shares the compiled kernels with `check`).
    test-bin) exec cargo test --features cuda,nccl --no-run "$@" ;;
    *) echo "usage: scripts/build-cuda.sh check|build|test-bin [cargo args]" >&2; exit 2 ;;
esac
