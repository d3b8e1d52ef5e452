#!/usr/bin/env bash
# `make gpu-bundle`: everything the GPU machine lacks, in one folder the device tool can carry.
#
#   make gpu-bundle                      # -> build/gpu_bundle/ (git-ignored, a few MiB)
#   # on the GPU machine (no network, Python 3.12, torch 2.11), from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
#       build/gpu_bundle/wheels/*.whl && export PYTHONPATH=/tmp/site:build/gpu_bundle/src:$PWD
#   python3 tools/gpu_check.py
#
# What it holds (the machine has torch, torchvision, timm, numpy, pandas, pillow, regex, tqdm,
# safetensors, huggingface-hub, pyyaml, fsspec; see /work/.library/device/KINDS.md):
#   wheels/  cp312 wheels (pure, or wcwidth's abi3 x86-64 one) of the packages OpenCLIP's trainer needs and the machine
#            lacks, at this project's pinned versions (constraints.txt), fetched with --no-deps:
#            webdataset (needs braceexpand, numpy, pyyaml), braceexpand, ftfy (needs wcwidth),
#            wcwidth;
#   src/     build/open_clip/src already patched (open_clip, open_clip_train): no git, no network
#            and no install step there, only PYTHONPATH;
#   MANIFEST the versions and the patch stamp it was made from.
# The overlay (open_clip_patch/) and tools/ travel with the working tree itself.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
OUT=${GPU_BUNDLE:-$REPO/build/gpu_bundle}
PACKAGES=(webdataset braceexpand ftfy wcwidth)

pin() {   # the version constraints.txt pins for a package
  local v
  v=$(grep -i -E "^$1==" "$REPO/constraints.txt" | head -1 | cut -d= -f3)
  [ -n "$v" ] || { echo "gpu-bundle: $1 is not pinned in constraints.txt" >&2; exit 1; }
  echo "$v"
}

[ -d "$REPO/build/open_clip/src/open_clip_train" ] || {
  echo "gpu-bundle: build/open_clip is missing; run 'make patch' first" >&2; exit 1; }
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/wheels"
specs=()
for name in "${PACKAGES[@]}"; do specs+=("$name==$(pin "$name")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$OUT.tmp/wheels" "${specs[@]}"
for whl in "$OUT.tmp/wheels"/*.whl; do   # pure or stable-ABI x86-64 wheels: they run on 3.12
  case "$whl" in *-py3-none-any.whl|*-py2.py3-none-any.whl|*-abi3-*x86_64*.whl) ;;
    *) echo "gpu-bundle: $(basename "$whl") is neither pure nor abi3 x86-64" >&2; exit 1;; esac
done
cp -r "$REPO/build/open_clip/src" "$OUT.tmp/src"
find "$OUT.tmp/src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$OUT.tmp/src"/*.egg-info
{ echo "made $(date -u +%FT%TZ) from $(git -C "$REPO" rev-parse --short HEAD)"
  echo "open_clip patch stamp: $(cat "$REPO/build/open_clip.stamp" 2>/dev/null || echo none)"
  (cd "$OUT.tmp/wheels" && ls -1 *.whl)
} > "$OUT.tmp/MANIFEST"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "gpu-bundle: $OUT ($(du -sh "$OUT" | cut -f1)): $(cd "$OUT/wheels" && ls | tr '\n' ' ')"

# Rehearse the GPU machine's install here: no index, a fresh --target, imports resolved from it
# (this machine's Python is 3.11, not 3.12: the wheels are pure or abi3, so the same files load;
# torch 2.11 itself and CUDA cannot be rehearsed here).
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
  "$OUT"/wheels/*.whl
PYTHONPATH="$site:$OUT/src:$REPO" "$PY" - "$site" "$OUT/src" <<'PYEOF'
import sys
site, src = sys.argv[1], sys.argv[2]
import braceexpand, ftfy, wcwidth, webdataset
import open_clip, open_clip_train.main, open_clip_patch  # noqa: F401
from open_clip_patch import hooks  # noqa: F401
where = {m.__name__: m.__file__ for m in (braceexpand, ftfy, wcwidth, webdataset)}
wrong = {k: v for k, v in where.items() if not v.startswith(site)}
wrong.update({"open_clip": open_clip.__file__} if not open_clip.__file__.startswith(src) else {})
assert not wrong, f"imported from outside the bundle: {wrong}"
print(f"gpu-bundle: rehearsed install OK ({', '.join(where)} from --target; open_clip from src/)")
PYEOF
