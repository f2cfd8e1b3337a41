#!/usr/bin/env bash
# Builds the example releases in erlang/examples/ into OUTDIR, offline, with rebar3 + relx:
#
#   OUTDIR/<rel>-<vsn>.tar.gz   one relx tarball (ERTS included) per version
#   OUTDIR/manifest.json        {"<rel>": {"<vsn>": {"path": abs, "sha256": hex, "size": bytes}}}
#
# Layout read: erlang/examples/<rel>/<vsn>/ is a complete rebar3 project for one version. The
# versions of a release are built in version order in one project directory, so each relx
# release directory keeps the older versions; a version that ships an appup
# (apps/*/ebin/*.appup) also gets a relup from the version before it.
# erlang/erel is copied into each project's _checkouts/ (a local dependency: no hex, no git).
#
# Cached: OUTDIR/.stamp holds a hash of erlang/erel, erlang/examples, this script and the
# Erlang/rebar3 installation; when it matches and the artifacts exist, nothing is rebuilt.
# Never writes into the source tree: all building happens in OUTDIR/.work.* (removed at the
# end). Concurrent runs on the same OUTDIR serialise on OUTDIR/.lock.
set -euo pipefail

die() { echo "build-examples: $*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }

ERLANG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
EXAMPLES_DIR="$ERLANG_DIR/examples"
EREL_DIR="$ERLANG_DIR/erel"
[ -d "$EXAMPLES_DIR" ] && [ -d "$EREL_DIR" ] || die "cannot find erlang/examples and erlang/erel next to $0"

# rebar3 from PATH, else the escript `make setup` unpacks into build/tools/bin.
REBAR3="$(command -v rebar3 || true)"
if [ -z "$REBAR3" ] && [ -x "$ERLANG_DIR/../build/tools/bin/rebar3" ]; then
    REBAR3="$(cd "$ERLANG_DIR/../build/tools/bin" && pwd -P)/rebar3"
fi
[ -n "$REBAR3" ] || die "rebar3 not found on PATH or in build/tools/bin (run 'make setup')"
ERL="$(command -v erl || true)"
[ -n "$ERL" ] || die "erl not found on PATH (Debian: apt-get install erlang-base)"
for tool in sha256sum tar flock find sort stat mktemp; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH"
done

mkdir -p "$1"
OUT="$(cd "$1" && pwd -P)"

# One builder per OUTDIR at a time; a second one waits, then finds the cache fresh.
exec 9>"$OUT/.lock"
flock 9

# ---------------------------------------------------------------------------------------------
# Cache key: every source file (path + content) plus the toolchain identity. Cheap: no erl start.
toolchain_id() {
    local erl_root
    erl_root="$(dirname "$(dirname "$(readlink -f "$ERL")")")"
    cat "$erl_root"/releases/*/OTP_VERSION 2>/dev/null || true
    ls "$erl_root"/lib 2>/dev/null || true
    stat -L -c '%n %s %Y' "$REBAR3"
}

source_hash() {
    {
        (cd "$ERLANG_DIR" && find erel examples build-examples.sh \
            \( -name _build -o -name _checkouts \) -prune -o \
            -type f ! -name '*.crashdump' ! -name erl_crash.dump -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum)
        toolchain_id
    } | sha256sum | cut -d' ' -f1
}

# Releases and versions, in build order.
list_releases() {
    find "$EXAMPLES_DIR" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | LC_ALL=C sort
}
list_versions() {
    find "$EXAMPLES_DIR/$1" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V
}

HASH="$(source_hash)"
STAMP="$OUT/.stamp"
MANIFEST="$OUT/manifest.json"

is_fresh() {
    [ -f "$STAMP" ] && [ -f "$MANIFEST" ] && [ "$(cat "$STAMP")" = "$HASH" ] || return 1
    local rel vsn
    for rel in $(list_releases); do
        for vsn in $(list_versions "$rel"); do
            [ -f "$OUT/$rel-$vsn.tar.gz" ] || return 1
        done
    done
    # The manifest holds absolute paths: it must be about this OUTDIR.
    grep -qF "\"path\":\"$OUT/" "$MANIFEST" || return 1
}

if is_fresh; then
    echo "build-examples: $OUT is up to date" >&2
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Under the lock, any work dir left behind is stale (a killed or failed earlier build).
rm -rf "$OUT"/.work.*
WORK="$(mktemp -d "$OUT/.work.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
LOG="$WORK/build.log"
mkdir -p "$WORK/out"

# Keep rebar3 away from the user's global config, plugins and hex cache: offline and hermetic.
export REBAR_CACHE_DIR="$WORK/rebar3-cache"
export REBAR_GLOBAL_CONFIG_DIR="$WORK/rebar3-config"
export REBAR_COLOR=none
export REBAR_OFFLINE=1
unset REBAR_CONFIG ERL_LIBS

# Copies a source directory's content (without build output) into DEST. -m: the copies get
# the current time, never an older mtime than a beam already compiled in _build.
copy_tree() {
    mkdir -p "$2"
    tar -C "$1" --exclude=_build --exclude=_checkouts --exclude='*.crashdump' -cf - . | tar -C "$2" -xmf -
}

rebar() {
    local proj="$1"; shift
    echo "\$ rebar3 $*" >>"$LOG"
    if ! (cd "$proj" && "$REBAR3" "$@") >>"$LOG" 2>&1; then
        echo "build-examples: 'rebar3 $*' failed in $proj; last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        trap - EXIT  # keep the work dir for a post-mortem
        die "build failed (work dir kept: $WORK)"
    fi
}

build_release() {
    local rel="$1" proj="$WORK/$1" prev="" vsn tarball
    mkdir -p "$proj/_checkouts"
    copy_tree "$EREL_DIR" "$proj/_checkouts/erel"
    for vsn in $(list_versions "$rel"); do
        echo "build-examples: $rel $vsn" >&2
        # Swap the project sources for this version's; _build (and the relx release directory
        # with the older versions in it) stays.
        find "$proj" -mindepth 1 -maxdepth 1 ! -name _build ! -name _checkouts -exec rm -rf {} +
        copy_tree "$EXAMPLES_DIR/$rel/$vsn" "$proj"
        # Compile every version from scratch: rebar3 decides by mtime, and a beam left from the
        # previous version would silently go into this one (no code change, no code_change/3).
        rm -rf "$proj/_build/default/lib" "$proj/_build/default/checkouts"
        rebar "$proj" release -n "$rel"
        if [ -n "$prev" ] && compgen -G "$proj/apps/*/ebin/*.appup" >/dev/null; then
            rebar "$proj" relup -n "$rel" -v "$vsn" -u "$prev"
        fi
        rebar "$proj" tar -n "$rel" -v "$vsn"
        tarball="$proj/_build/default/rel/$rel/$rel-$vsn.tar.gz"
        [ -f "$tarball" ] || die "rebar3 tar did not produce $tarball"
        cp "$tarball" "$WORK/out/$rel-$vsn.tar.gz"
        prev="$vsn"
    done
}

json_str() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

write_manifest() {
    local rel vsn path sep_rel="" sep_vsn
    {
        printf '{'
        for rel in $(list_releases); do
            printf '%s%s:{' "$sep_rel" "$(json_str "$rel")"
            sep_rel=","
            sep_vsn=""
            for vsn in $(list_versions "$rel"); do
                path="$OUT/$rel-$vsn.tar.gz"
                printf '%s%s:{"path":%s,"sha256":"%s","size":%s}' "$sep_vsn" "$(json_str "$vsn")" \
                    "$(json_str "$path")" "$(sha256sum "$path" | cut -d' ' -f1)" "$(stat -c %s "$path")"
                sep_vsn=","
            done
            printf '}'
        done
        printf '}\n'
    } >"$WORK/manifest.json"
}

START=$SECONDS
rm -f "$STAMP"
for rel in $(list_releases); do
    build_release "$rel"
done
for f in "$WORK"/out/*.tar.gz; do
    mv -f "$f" "$OUT/"
done
write_manifest
mv -f "$WORK/manifest.json" "$MANIFEST"
echo "$HASH" >"$STAMP.tmp"
mv -f "$STAMP.tmp" "$STAMP"
echo "build-examples: built $(list_releases | tr '\n' ' ')into $OUT in $((SECONDS - START)) s" >&2
