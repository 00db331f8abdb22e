# Sourced by the benches that run PyTorch beside Flare: sets `venv` (torch for CPU use, installed
# once into ~/.cache/flare/torch-venv), builds the release `flare` binary into `flare`, and makes
# a `tmp` directory removed on exit.
venv="${FLARE_TORCH_VENV:-$HOME/.cache/flare/torch-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch numpy
fi
cargo build --release -q -p flare-cli
flare=target/release/flare
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
