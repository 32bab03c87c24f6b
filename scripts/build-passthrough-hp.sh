#!/usr/bin/env bash
# Builds libfuse 3.18.x's example/passthrough_hp (C++, the low-level passthrough example) into
# target/passthrough_hp/, for scripts/bench.sh's plain-FUSE ceilings `passthrough_hp` and
# `passthrough_hp-uring` (the same binary with `-o io_uring`).
#
# Usage: scripts/build-passthrough-hp.sh [options]
#
#   --src PATH      libfuse source (or env LIBFUSE_SRC): an unpacked source tree, a source
#                   tarball (.tar.gz/.tar.xz), or a git directory (bare or not), from which
#                   the tag of --tag is exported with `git archive`
#   --tag TAG       git tag to export when --src is a git directory (default fuse-3.18.2)
#   --out DIR       where the binary goes (default target/passthrough_hp)
#   --smoke         after building, mount it on a temporary directory, list it, unmount (root)
#   --no-deps       do not apt-get install the build dependencies (root only does it anyway)
#   --keep          keep the temporary source and build directories
#
# Without --src the source comes from Debian's registry: the newest 3.18.x source package of
# fuse3 (`apt-get source --download-only`, checked against Debian's signed index), using a
# private apt state directory so the machine's apt configuration is not changed. The upstream
# tarball (fuse3_3.18.*.orig.tar.gz) is built as is; Debian's patches are not applied.
#
# Where libfuse 3.18 source can be had (looked up 2026-12): Debian bookworm, this machine's
# release, has fuse3/libfuse3-dev 3.14.0-4 only, and bookworm-backports carries no fuse3.
# Debian trixie has 3.17.2; Debian sid (unstable) has the source package fuse3 3.18.3-1, which is
# what the default uses (sid moves on: when it no longer has a 3.18.x, pass --src). No PyPI
# package bundles libfuse's source (pyfuse3, llfuse, mfusepy, fusepy, fuse-python all link
# the system's libfuse), and crates.io's FUSE crates are either pure Rust (fuser) or bindings
# to the system library. Ubuntu's newer releases carry 3.18.x too, but their archive is not
# reachable from here. GitHub is not reachable either; a local git mirror of libfuse works
# through --src.
#
# libfuse is linked statically (-Ddefault_library=static), so the binary uses the 3.18 library
# it was built with, never the system's libfuse3.so.3 (3.14 on bookworm); `ldd` on it must not
# list libfuse. FUSE-over-io_uring support (HAVE_URING) needs liburing (with SQE128) and
# libnuma at build time: liburing-dev and libnuma-dev; the build fails if meson did not
# enable it. Build tools: meson (>= 0.60), ninja-build, pkg-config, g++ (C++20).
#
# The build runs with one job (ninja -j1): this 2-CPU machine is shared with other builds.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=${LIBFUSE_SRC:-} TAG=fuse-3.18.2 OUT=$ROOT/target/passthrough_hp SMOKE=0 DEPS=1 KEEP=0

die() { echo "build-passthrough-hp: $*" >&2; exit 1; }
note() { echo "build-passthrough-hp: $*" >&2; }
usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
    case $1 in
        --src) SRC=${2:?}; shift ;;
        --tag) TAG=${2:?}; shift ;;
        --out) OUT=${2:?}; shift ;;
        --smoke) SMOKE=1 ;;
        --no-deps) DEPS=0 ;;
        --keep) KEEP=1 ;;
        -h|--help) usage 0 ;;
        *) echo "build-passthrough-hp: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done

IS_ROOT=0; [[ $(id -u) == 0 ]] && IS_ROOT=1

# ---------------------------------------------------------------------------------------------
# Build dependencies
have_pc() { pkg-config --exists "$1" 2>/dev/null; }
need=()
command -v meson >/dev/null || need+=(meson)
command -v ninja >/dev/null || need+=(ninja-build)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v g++ >/dev/null || need+=(g++)
have_pc liburing || need+=(liburing-dev)
have_pc numa || need+=(libnuma-dev)
if ((${#need[@]})); then
    if ((IS_ROOT && DEPS)); then
        note "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq "${need[@]}" >/dev/null; }; then
            die "apt-get install ${need[*]} failed"
        fi
    else
        die "missing ${need[*]}; run: apt-get install -y ${need[*]}"
    fi
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/libfuse-build.XXXXXX")
cleanup() {
    local rc=$?
    if ((KEEP)); then note "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
mkdir -p "$TMP/src"

# ---------------------------------------------------------------------------------------------
# Source
ORIGIN=""
if [[ -n $SRC ]]; then
    if [[ -d $SRC ]] && git --git-dir="$SRC" rev-parse --git-dir >/dev/null 2>&1 && [[ ! -f $SRC/meson.build ]]; then
        # A git directory (a bare mirror, or a .git): export the tag.
        git --git-dir="$SRC" rev-parse -q --verify "refs/tags/$TAG" >/dev/null || die "$SRC has no tag $TAG"
        git --git-dir="$SRC" archive "$TAG" | tar -x -C "$TMP/src" || die "git archive $TAG from $SRC failed"
        ORIGIN="git tag $TAG ($(git --git-dir="$SRC" rev-parse --short "$TAG^{commit}")) of $SRC"
    elif [[ -d $SRC ]]; then
        [[ -f $SRC/meson.build ]] || die "$SRC has no meson.build: not a libfuse source tree"
        cp -a "$SRC/." "$TMP/src/"
        ORIGIN="source tree $SRC"
    elif [[ -f $SRC ]]; then
        tar -xf "$SRC" -C "$TMP/src" --strip-components=1 || die "cannot unpack $SRC"
        ORIGIN="tarball $SRC ($(sha256sum "$SRC" | cut -c1-16)…)"
    else
        die "--src $SRC: no such file or directory"
    fi
else
    # Debian's source package, through apt with a private state directory (the machine's own
    # sources and lists stay as they are). deb-src of sid only: that is where 3.18.x is.
    A=$TMP/apt
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/dl"
    kr=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -f $kr ]] || die "no $kr (apt-get install debian-archive-keyring), or pass --src"
    echo "deb-src [signed-by=$kr] http://deb.debian.org/debian sid main" >"$A/sources.list"
    APT_O=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o Debug::NoLocking=1)
    ((IS_ROOT)) && APT_O+=(-o APT::Sandbox::User=root)
    note "fetching Debian's index of source packages (sid) into a private apt directory"
    timeout 600 apt-get "${APT_O[@]}" update -qq >"$TMP/apt-update.log" 2>&1 ||
        { cat "$TMP/apt-update.log" >&2; die "apt-get update of the private source list failed; pass --src"; }
    ver=$(apt-cache "${APT_O[@]}" showsrc fuse3 2>/dev/null | awk '/^Version: 3\.18\./ {print $2}' | sort -V | tail -n 1)
    [[ -n $ver ]] || die "Debian sid has no fuse3 3.18.x source any more ($(apt-cache "${APT_O[@]}" showsrc fuse3 2>/dev/null | awk '/^Version:/ {printf "%s ", $2}')); pass --src"
    note "downloading Debian source package fuse3 $ver"
    (cd "$A/dl" && timeout 600 apt-get "${APT_O[@]}" source --download-only -qq "fuse3=$ver") >"$TMP/apt-source.log" 2>&1 ||
        { cat "$TMP/apt-source.log" >&2; die "apt-get source fuse3=$ver failed; pass --src"; }
    orig=""
    for x in "$A/dl"/fuse3_*.orig.tar.*; do [[ -f $x && $x != *.asc ]] && { orig=$x; break; }; done
    [[ -n $orig ]] || die "no upstream tarball in Debian's source package fuse3 $ver"
    tar -xf "$orig" -C "$TMP/src" --strip-components=1 || die "cannot unpack $orig"
    ORIGIN="Debian source package fuse3 $ver (sid), upstream tarball $(basename "$orig") ($(sha256sum "$orig" | cut -c1-16)…), Debian patches not applied"
fi

LF_VER=$(sed -n "s/^ *version: *'\([^']*\)'.*/\1/p" "$TMP/src/meson.build" | head -n 1)
[[ $LF_VER == 3.18.* ]] || die "the source is libfuse ${LF_VER:-?}, not 3.18.x"
[[ -f $TMP/src/example/passthrough_hp.cc ]] || die "the source has no example/passthrough_hp.cc"
note "libfuse $LF_VER from $ORIGIN"

# ---------------------------------------------------------------------------------------------
# Build: static libfuse, examples only (no utils, no tests, nothing installed)
note "configuring (meson)"
(cd "$TMP/src" && timeout 600 meson setup "$TMP/build" -Ddefault_library=static -Dexamples=true \
    -Dutils=false -Dtests=false -Denable-io-uring=true -Dbuildtype=release) >"$TMP/meson.log" 2>&1 ||
    { tail -n 30 "$TMP/meson.log" >&2; die "meson setup failed"; }
grep -Eq '^#define HAVE_URING( |$)' "$TMP/build/fuse_config.h" 2>/dev/null ||
    { grep -i 'uring\|numa' "$TMP/meson.log" >&2; die "meson did not enable FUSE-over-io_uring (HAVE_URING): liburing with SQE128 and libnuma are needed"; }
note "building passthrough_hp (ninja -j1)"
timeout 3600 ninja -C "$TMP/build" -j1 example/passthrough_hp >"$TMP/ninja.log" 2>&1 ||
    { tail -n 40 "$TMP/ninja.log" >&2; die "ninja failed"; }
B=$TMP/build/example/passthrough_hp
[[ -x $B ]] || die "no binary at $B"
if ldd "$B" 2>/dev/null | grep -q 'libfuse'; then
    die "$B links a shared libfuse ($(ldd "$B" | grep libfuse)); expected libfuse linked statically"
fi

mkdir -p "$OUT"
cp "$B" "$OUT/passthrough_hp.new" && mv -f "$OUT/passthrough_hp.new" "$OUT/passthrough_hp"
{
    echo "libfuse $LF_VER (static), from $ORIGIN"
    echo "built $(date '+%F %T %Z') with $(g++ --version | head -n 1), meson $(meson --version), liburing $(pkg-config --modversion liburing), libnuma $(pkg-config --modversion numa 2>/dev/null || echo '?')"
} >"$OUT/VERSION"
note "built $OUT/passthrough_hp: $(head -n 1 "$OUT/VERSION")"

# ---------------------------------------------------------------------------------------------
# Smoke test: mount a temporary directory through it, list it, unmount. Only processes started
# here are stopped, by PID.
if ((SMOKE)); then
    ((IS_ROOT)) || die "--smoke needs root (/dev/fuse mount with allow_other defaults)"
    FM=$(command -v fusermount3 || command -v fusermount || true)
    S=$TMP/smoke-src M=$TMP/smoke-mnt
    mkdir -p "$S/sub" "$M"
    echo hello >"$S/sub/file"
    "$OUT/passthrough_hp" --foreground --nopassthrough "$S" "$M" >"$TMP/smoke.log" 2>&1 &
    pid=$!
    ok=0
    for ((i = 0; i < 50; i++)); do
        if timeout 5 mountpoint -q "$M"; then ok=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if ((ok)) && [[ $(timeout 10 cat "$M/sub/file") == hello ]] && timeout 10 ls -la "$M" "$M/sub" >/dev/null; then
        note "smoke test: mounted, listed and read through passthrough_hp ($(grep -F " $M " /proc/self/mounts | cut -d' ' -f3))"
    else
        ok=0
        note "smoke test FAILED: $(tail -n 5 "$TMP/smoke.log" | tr '\n' ' ')"
    fi
    timeout 20 "${FM:-umount}" -u "$M" 2>/dev/null || timeout 20 umount "$M" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; sleep 1; fi
    wait "$pid" 2>/dev/null || true
    grep -qF " $M " /proc/self/mounts && timeout 20 umount -l "$M" 2>/dev/null
    ((ok)) || exit 1
fi
