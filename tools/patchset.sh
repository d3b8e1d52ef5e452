#!/usr/bin/env bash
# The patch set over the pinned OpenCLIP sdist (docs/architecture.md, "The hook seam").
#
#   tools/patchset.sh apply     unpack the pinned sdist into $TREE as an `upstream` commit and
#                               apply $PATCH_DIR/series with `git am --3way`; a no-op when the
#                               tree already holds exactly these patches
#   tools/patchset.sh refresh   re-export the commits on top of `upstream` into $PATCH_DIR
#   tools/patchset.sh check     apply everything from scratch in a temporary tree, re-export,
#                               and fail unless $PATCH_DIR is exactly what comes out
#
# Environment (defaults in brackets): PYTHON [.venv/bin/python], TREE [build/open_clip],
# PATCH_DIR [patches], CACHE [build/sdist], UPSTREAM_FILE [UPSTREAM].
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TREE=${TREE:-$ROOT/build/open_clip}
PATCH_DIR=${PATCH_DIR:-$ROOT/patches}
CACHE=${CACHE:-$ROOT/build/sdist}
UPSTREAM_FILE=${UPSTREAM_FILE:-$ROOT/UPSTREAM}
PKG=open_clip_torch

# Fixed identities and dates: the same patches give the same commits and the same export.
export GIT_AUTHOR_NAME="fastclip patches" GIT_AUTHOR_EMAIL="patches@fastclip.invalid"
export GIT_COMMITTER_NAME="fastclip patches" GIT_COMMITTER_EMAIL="patches@fastclip.invalid"
export GIT_AUTHOR_DATE="2000-01-01T00:00:00+0000" GIT_COMMITTER_DATE="2000-01-01T00:00:00+0000"
GIT="git -c core.autocrlf=false -c advice.detachedHead=false -c init.defaultBranch=main -c commit.gpgsign=false"

die() { echo "patchset: error: $*" >&2; exit 1; }
say() { echo "patchset: $*"; }

upstream_field() {  # upstream_field N -> field N of the $PKG line in UPSTREAM
    awk -v pkg="$PKG" -v n="$1" '$1 == pkg { print $n }' "$UPSTREAM_FILE"
}

series_names() {  # the patch names in series, in order, without comments or blank lines
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$PATCH_DIR/series" | grep -v '^$' || true
}

validate_series() {
    [ -f "$PATCH_DIR/series" ] || die "$PATCH_DIR/series is missing"
    local dup missing unlisted
    dup=$(series_names | sort | uniq -d)
    [ -z "$dup" ] || die "patches listed twice in series: $dup"
    missing=$(series_names | while read -r p; do [ -f "$PATCH_DIR/$p" ] || echo "$p"; done)
    [ -z "$missing" ] || die "series lists patches that do not exist: $missing"
    unlisted=$(cd "$PATCH_DIR" && for p in *.patch; do [ -e "$p" ] || continue
        series_names | grep -qxF "$p" || echo "$p"; done)
    [ -z "$unlisted" ] || die "patches not listed in series: $unlisted"
}

fetch_sdist() {  # prints the verified sdist's path
    local version file sha got
    version=$(upstream_field 2); file=$(upstream_field 3); sha=$(upstream_field 4)
    [ -n "$sha" ] || die "no '$PKG' line in $UPSTREAM_FILE"
    mkdir -p "$CACHE"
    if [ ! -f "$CACHE/$file" ]; then
        say "downloading $PKG==$version sdist" >&2
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: "$PKG==$version" -d "$CACHE" >&2 \
            || die "could not download $PKG==$version"
    fi
    got=$(sha256sum "$CACHE/$file" | cut -d' ' -f1)
    [ "$got" = "$sha" ] || die "$CACHE/$file has sha256 $got, UPSTREAM pins $sha"
    echo "$CACHE/$file"
}

patches_digest() {
    (cat "$PATCH_DIR/series"; series_names | while read -r p; do cat "$PATCH_DIR/$p"; done) \
        | sha256sum | cut -d' ' -f1
}

unpack_upstream() {  # unpack_upstream DIR: the sdist as one commit tagged `upstream`
    local dir=$1 sdist tmp
    sdist=$(fetch_sdist)
    tmp=$(mktemp -d)
    tar -xzf "$sdist" -C "$tmp"
    rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
    mv "$tmp"/*/ "$dir"; rm -rf "$tmp"
    (cd "$dir" && $GIT init -q && $GIT add -A && $GIT commit -q -m "upstream: $(basename "$sdist")" \
        && $GIT tag upstream)
}

apply_series() {  # apply_series DIR
    local dir=$1 p
    while read -r p; do
        if ! (cd "$dir" && $GIT am -q --3way --committer-date-is-author-date "$PATCH_DIR/$p" >/dev/null 2>&1); then
            echo "patchset: error: patch '$p' does not apply. Rejected hunk:" >&2
            (cd "$dir" && $GIT am --abort >/dev/null 2>&1; $GIT apply --check -v "$PATCH_DIR/$p" 2>&1 | sed 's/^/    /' >&2) || true
            exit 1
        fi
    done < <(series_names)
}

export_patches() {  # export_patches DIR OUT: commits on top of `upstream` as stable patch files
    local dir=$1 out=$2
    mkdir -p "$out"
    (cd "$dir" && $GIT format-patch -q --zero-commit --no-signature --full-index --no-numbered \
        --stat=80 -o "$out" upstream..HEAD) >/dev/null
    # format-patch carries the author date; pin it so an export never differs by time alone.
    sed -i -e '1,/^$/ s/^Date: .*/Date: Sat, 1 Jan 2000 00:00:00 +0000/' "$out"/*.patch 2>/dev/null || true
    (cd "$out" && ls -1 *.patch 2>/dev/null) > "$out/series.new" || true
    { echo "# Applied in order by tools/patchset.sh (make patch). Regenerate with make refresh-patches."
      cat "$out/series.new"; } > "$out/series"
    rm -f "$out/series.new"
}

cmd_apply() {
    validate_series
    local want stamp="$TREE.stamp"
    want=$(patches_digest)
    if [ -d "$TREE/.git" ] && [ -f "$stamp" ]; then
        local head dirty
        head=$(cd "$TREE" && git rev-parse HEAD)
        dirty=$(cd "$TREE" && git status --porcelain --untracked-files=no)
        if [ "$(cat "$stamp")" = "$want $head" ] && [ -z "$dirty" ]; then
            say "$TREE is up to date with $PATCH_DIR"; return 0
        fi
        if [ -n "$dirty" ] || [ "$(cut -d' ' -f2 "$stamp")" != "$head" ]; then
            die "$TREE has changes not exported to $PATCH_DIR: commit them and run 'make refresh-patches', or remove $TREE"
        fi
    fi
    unpack_upstream "$TREE"
    apply_series "$TREE"
    echo "$want $(cd "$TREE" && git rev-parse HEAD)" > "$stamp"
    say "applied $(series_names | wc -l) patch(es) onto $(upstream_field 3) in $TREE"
}

cmd_refresh() {
    [ -d "$TREE/.git" ] || die "$TREE does not exist: run 'make patch' first"
    [ -z "$(cd "$TREE" && git status --porcelain --untracked-files=no)" ] \
        || die "$TREE has uncommitted changes: commit them first (one commit per patch)"
    local tmp; tmp=$(mktemp -d)
    export_patches "$TREE" "$tmp"
    rm -f "$PATCH_DIR"/*.patch
    cp "$tmp"/*.patch "$tmp/series" "$PATCH_DIR"/ 2>/dev/null || cp "$tmp/series" "$PATCH_DIR"/
    rm -rf "$tmp"
    echo "$(patches_digest) $(cd "$TREE" && git rev-parse HEAD)" > "$TREE.stamp"
    say "exported $(series_names | wc -l) patch(es) to $PATCH_DIR"
}

cmd_check() {
    validate_series
    local tmp; tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    unpack_upstream "$tmp/tree"
    apply_series "$tmp/tree"
    export_patches "$tmp/tree" "$tmp/out"
    local listing p
    listing=$(diff -u <(cd "$PATCH_DIR" && ls -1 ./*.patch 2>/dev/null) <(cd "$tmp/out" && ls -1 ./*.patch 2>/dev/null)) || true
    for p in $(series_names); do
        [ -f "$tmp/out/$p" ] && diff -u "$PATCH_DIR/$p" "$tmp/out/$p" >>"$tmp/diff" 2>&1 || true
    done
    diff -u <(series_names) <(PATCH_DIR=$tmp/out series_names) >>"$tmp/diff" 2>&1 || true
    if [ -n "$listing" ] || [ -s "$tmp/diff" ]; then
        { echo "$listing"; cat "$tmp/diff"; } >&2
        die "$PATCH_DIR is not what the applied series exports: run 'make refresh-patches'"
    fi
    say "check passed: $(series_names | wc -l) patch(es) apply cleanly and re-export identically"
}

case "${1:-}" in
    apply) cmd_apply ;;
    refresh) cmd_refresh ;;
    check) cmd_check ;;
    *) echo "usage: $0 apply|refresh|check" >&2; exit 2 ;;
esac
