#!/usr/bin/env bash
# Build Horovod for PyTorch + Gloo (no MPI, TensorFlow or MXNet) from its pinned
# PyPI sdist with patches/horovod applied, and install the wheel into $VENV.
#
#   VENV=.venv bash tools/build_horovod.sh        (what `make horovod` runs)
#
# Steps, each skipped when its result is already there:
#   1. read "horovod <version> <sdist> <sha256>" from UPSTREAM;
#   2. cache key = sha256 over the sdist sha256, patches/horovod/series and every
#      patch it lists, the torch and Python versions, and the CUDA mode (below);
#   3. if build/horovod/wheels/<key>/ holds no wheel: download the sdist with pip,
#      verify its sha256, unpack it to build/horovod/src, apply the series in
#      order (stop at the first patch that fails) and build the wheel;
#   4. install the wheel with --no-deps, unless the venv already has exactly
#      that wheel installed (pip's direct_url.json names it and its sha256).
#
# CUDA: a CUDA build of torch makes Horovod's CMake compile its CUDA parts, which
# needs a complete toolkit.  The toolkit is taken from $CUDA_HOME/$CUDA_PATH if
# that holds one, else asked of the `nvcc` on PATH (its --dryrun output names
# its real install dir, through wrapper scripts and symlinks), else
# /usr/local/cuda.  Found: CUDA_HOME/HOROVOD_CUDA_HOME point at it and Horovod
# also compiles its CUDA code (CUDA tensors are then staged through host memory
# for Gloo; no NCCL).  Not found, or HOROVOD_WITHOUT_CUDA=1 given: the build runs
# with HOROVOD_WITHOUT_CUDA=1 (patch 0003) and makes the CPU-only extension.
# Collectives run over Gloo either way.
#
# Knobs: VENV (default .venv), MAKEFLAGS (default -j<cores>),
# HOROVOD_WITHOUT_CUDA=1, HOROVOD_BUILD_CUDA_CC_LIST (Horovod's own: comma list of
# compute capabilities for its CUDA kernels; default every one nvcc knows; part
# of the cache key).
set -euo pipefail

log() { printf '[horovod] %s\n' "$*"; }
die() { printf '[horovod] ERROR: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="$VENV/bin/python"
[ -x "$PY" ] || die "no Python at $PY (set VENV to the project's virtual environment)"

PATCH_DIR="$ROOT/patches/horovod"
SERIES="$PATCH_DIR/series"
WORK="$ROOT/build/horovod"
SRC="$WORK/src"
SDIST_DIR="$WORK/sdist"
WHEEL_ROOT="$WORK/wheels"
LOG="$WORK/build.log"

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# --- 1. pinned sdist -------------------------------------------------------------
pin="$(awk '$1 == "horovod" { print $2, $3, $4 }' UPSTREAM)"
[ -n "$pin" ] || die "no 'horovod' line in UPSTREAM"
[ "$(printf '%s\n' "$pin" | wc -l)" -eq 1 ] || die "more than one 'horovod' line in UPSTREAM"
read -r VERSION SDIST_NAME SDIST_SHA <<<"$pin"
[ -n "$SDIST_SHA" ] || die "malformed 'horovod' line in UPSTREAM: $pin"

# --- CUDA toolkit ---------------------------------------------------------------
is_toolkit() {  # a directory with a working nvcc and the CUDA runtime headers
    [ -n "$1" ] && [ -x "$1/bin/nvcc" ] && "$1/bin/nvcc" --version >/dev/null 2>&1 &&
        { [ -f "$1/include/cuda_runtime.h" ] || compgen -G "$1/targets/*/include/cuda_runtime.h" >/dev/null; }
}
find_toolkit() {
    local d nvcc
    for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
        if is_toolkit "$d"; then realpath "$d"; return 0; fi
    done
    if nvcc="$(command -v nvcc)"; then
        # nvcc prints '#$ TOP=<install dir>/bin/..' before doing anything; /usr/local/bin/nvcc
        # may be a wrapper script, so its own location says nothing.
        d="$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
        if [ -n "$d" ] && is_toolkit "$d"; then realpath "$d"; return 0; fi
    fi
    if is_toolkit /usr/local/cuda; then realpath /usr/local/cuda; return 0; fi
    return 1
}

CUDA_DIR=""
if [ "${HOROVOD_WITHOUT_CUDA:-}" = "1" ]; then
    MODE="CPU-only (HOROVOD_WITHOUT_CUDA=1 given)"
    MODE_KEY="cpu"
elif CUDA_DIR="$(find_toolkit)"; then
    cuda_release="$("$CUDA_DIR/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    MODE="CUDA $cuda_release toolkit at $CUDA_DIR"
    MODE_KEY="cuda $cuda_release $CUDA_DIR cc=${HOROVOD_BUILD_CUDA_CC_LIST:-all}"
else
    CUDA_DIR=""
    MODE="CPU-only (no CUDA toolkit found)"
    MODE_KEY="cpu"
fi

# --- 2. cache key ----------------------------------------------------------------
[ -f "$SERIES" ] || die "missing $SERIES"
mapfile -t PATCHES < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$SERIES")
for p in "${PATCHES[@]}"; do
    [ -f "$PATCH_DIR/$p" ] || die "series names $p, which is not in patches/horovod"
done
# One interpreter start for everything asked of the venv: torch version, Python tag,
# and the wheel file/sha256 pip recorded for an installed horovod (if any).
mapfile -t VENV_INFO < <("$PY" - <<'EOF'
import importlib.metadata as md, json, sys
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return ""
print(version("torch"))
print("cp%d%d" % sys.version_info[:2])
url = sha = ""
try:
    d = md.distribution("horovod")
    info = json.loads(d.read_text("direct_url.json") or "{}")
    url = info.get("url", "")
    arch = info.get("archive_info", {})
    sha = arch.get("hashes", {}).get("sha256") or arch.get("hash", "").partition("sha256=")[2]
except (md.PackageNotFoundError, ValueError):
    pass
print(url)
print(sha)
EOF
)
TORCH_VERSION="${VENV_INFO[0]}"
PY_TAG="${VENV_INFO[1]}"
INSTALLED_URL="${VENV_INFO[2]:-}"
INSTALLED_SHA="${VENV_INFO[3]:-}"
[ -n "$TORCH_VERSION" ] || die "torch is not installed in $VENV (run make setup first)"

key_material="$(
    printf 'sdist %s %s\n' "$SDIST_NAME" "$SDIST_SHA"
    printf 'series %s\n' "$(sha256 "$SERIES")"
    for p in "${PATCHES[@]}"; do
        printf 'patch %s %s\n' "$p" "$(sha256 "$PATCH_DIR/$p")"
    done
    printf 'torch %s\npython %s\nmode %s\n' "$TORCH_VERSION" "$PY_TAG" "$MODE_KEY"
)"
KEY="$(printf '%s\n' "$key_material" | sha256sum | cut -c1-16)"
WHEEL_DIR="$WHEEL_ROOT/$KEY"
log "horovod $VERSION for torch $TORCH_VERSION ($PY_TAG), $MODE, ${#PATCHES[@]} patches; cache key $KEY"

find_wheel() { compgen -G "$WHEEL_DIR/horovod-$VERSION-*.whl" | head -n 1; }
WHEEL="$(find_wheel || true)"

# --- 3. build --------------------------------------------------------------------
if [ -n "$WHEEL" ] && [ -f "$WHEEL.sha256" ]; then
    log "cached wheel $(basename "$WHEEL") (build/horovod/wheels/$KEY)"
else
    for tool in patch tar cmake c++ make; do
        command -v "$tool" >/dev/null || die "'$tool' is needed to build horovod but is not on PATH"
    done
    mkdir -p "$SDIST_DIR"
    sdist="$SDIST_DIR/$SDIST_NAME"
    if [ -f "$sdist" ] && [ "$(sha256 "$sdist")" = "$SDIST_SHA" ]; then
        log "sdist $SDIST_NAME already downloaded, sha256 ok"
    else
        rm -f "$sdist"
        log "downloading $SDIST_NAME with pip"
        "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
            -d "$SDIST_DIR" "horovod==$VERSION" || die "pip download of horovod==$VERSION failed"
        [ -f "$sdist" ] || die "pip download did not produce $SDIST_NAME"
        got="$(sha256 "$sdist")"
        if [ "$got" != "$SDIST_SHA" ]; then
            rm -f "$sdist"
            die "sha256 mismatch for $SDIST_NAME: got $got, UPSTREAM pins $SDIST_SHA"
        fi
        log "sha256 ok"
    fi

    log "unpacking to build/horovod/src"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    tar --no-same-owner --strip-components=1 -xzf "$sdist" -C "$SRC"

    for p in "${PATCHES[@]}"; do
        if ! out="$(patch -d "$SRC" -p1 --batch --forward --fuzz=0 --dry-run -i "$PATCH_DIR/$p" 2>&1)"; then
            printf '%s\n' "$out" >&2
            die "patch $p does not apply"
        fi
        patch -d "$SRC" -p1 --batch --forward --fuzz=0 --quiet -i "$PATCH_DIR/$p" || die "patch $p failed"
        log "applied $p"
    done

    build_env=(
        HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1
        HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
        # setup.py passes -j8 to make unless MAKEFLAGS is set.
        MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
    )
    if [ -n "$CUDA_DIR" ]; then
        build_env+=(CUDA_HOME="$CUDA_DIR" HOROVOD_CUDA_HOME="$CUDA_DIR" PATH="$CUDA_DIR/bin:$PATH")
    else
        build_env+=(HOROVOD_WITHOUT_CUDA=1)
    fi
    tmp_wheels="$WORK/wheels.tmp"
    rm -rf "$tmp_wheels"
    log "building wheel ($MODE, MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}); log: build/horovod/build.log"
    start=$SECONDS
    if ! env -u CUDA_PATH "${build_env[@]}" \
            "$PY" -m pip wheel --verbose --no-deps --no-build-isolation --no-cache-dir \
            -w "$tmp_wheels" "$SRC" >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "wheel build failed after $((SECONDS - start)) s; full log: build/horovod/build.log"
    fi
    built="$(compgen -G "$tmp_wheels/horovod-$VERSION-*.whl" | head -n 1 || true)"
    [ -n "$built" ] || die "pip wheel produced no horovod-$VERSION wheel (see build/horovod/build.log)"
    rm -rf "$WHEEL_DIR"
    mkdir -p "$WHEEL_DIR"
    mv "$built" "$WHEEL_DIR/"
    rm -rf "$tmp_wheels"
    WHEEL="$WHEEL_DIR/$(basename "$built")"
    printf '%s\n' "$key_material" >"$WHEEL_DIR/key.txt"
    sha256 "$WHEEL" >"$WHEEL.sha256"  # written last: marks the cache entry complete
    log "built $(basename "$WHEEL") in $((SECONDS - start)) s"
fi

# --- 4. install ------------------------------------------------------------------
WHEEL_SHA="$(cat "$WHEEL.sha256")"
if [ "$INSTALLED_URL" = "file://$WHEEL" ] && [ "$INSTALLED_SHA" = "$WHEEL_SHA" ]; then
    log "already installed in $VENV: $(basename "$WHEEL")"
    exit 0
fi
log "installing $(basename "$WHEEL") into $VENV"
"$PY" -m pip install --quiet --no-deps --no-index --force-reinstall "$WHEEL" \
    || die "pip install of $WHEEL failed"
if ! "$PY" - <<'EOF'; then
import horovod, horovod.torch as hvd
assert hvd.gloo_built(), "horovod was built without Gloo"
print("[horovod] installed; import ok: horovod %s, gloo=%s mpi=%s cuda=%s"
      % (horovod.__version__, hvd.gloo_built(), hvd.mpi_built(), hvd.cuda_built()))
EOF
    # Do not leave a broken install that the next run would take for done.
    "$PY" -m pip uninstall --quiet --yes horovod || true
    die "horovod.torch does not import after installing $(basename "$WHEEL"); uninstalled it again"
fi
