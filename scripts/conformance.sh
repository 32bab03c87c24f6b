#!/usr/bin/env bash
# POSIX conformance of envelopefs, measured with pjdfstest (the Rust rewrite on crates.io).
#
# Usage: scripts/conformance.sh [--compare] [--timeout SECS] [--out DIR] [--no-build] [PATTERN...]
#
#   --compare       also run the suite on gocryptfs and on a plain directory of the host
#                   filesystem, in the same run and with the same configuration
#                   (or CONFORMANCE_COMPARE=1)
#   --timeout SECS  wall-clock limit of each pjdfstest run (default 900, or CONFORMANCE_TIMEOUT)
#   --out DIR       where the raw pjdfstest output and daemon logs are kept
#                   (default target/conformance)
#   --no-build      use the existing target/release/envelopefs
#   PATTERN...      only run pjdfstest cases whose name contains one of these (e.g. chmod)
#
# CONFORMANCE_INIT_ARGS: extra `envelopefs init` flags, e.g. `--plaintext-names` to test a
# volume whose names are not encrypted (the default volume encrypts them).
#
# Prints one line per filesystem, `NAME: N passed/M failed (S skipped, T total)`, followed by
# the failing test cases, each with the start of its failure message. The raw pjdfstest output
# and the daemon logs stay in the --out directory.
#
# Exit status: 0 when every run completed (and, with --compare, envelopefs passed at least as
# many cases as gocryptfs); 1 when envelopefs passed fewer cases than gocryptfs; 2 on a setup
# error, a timeout or a run that ended without pjdfstest's summary.
#
# Needs root (pjdfstest switches users and creates device nodes), /dev/fuse, and fusermount3;
# gocryptfs only with --compare. Every mount is made by a child process of this script and is
# unmounted, and its daemon killed by PID, on any exit.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMPARE=${CONFORMANCE_COMPARE:-0}
TIMEOUT=${CONFORMANCE_TIMEOUT:-900}
OUT=${CONFORMANCE_OUT:-$ROOT/target/conformance}
BUILD=1
PATTERNS=()

die() {
    echo "conformance: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --compare) COMPARE=1 ;;
        --timeout) TIMEOUT=${2:?--timeout needs a number of seconds}; shift ;;
        --out) OUT=${2:?--out needs a directory}; shift ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        --) shift; PATTERNS+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) PATTERNS+=("$1") ;;
    esac
    shift
done
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds, not '$TIMEOUT'"

[[ $(id -u) -eq 0 ]] || die "run as root: pjdfstest needs it to switch users and make device nodes"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing; load the fuse module"
command -v fusermount3 >/dev/null || die "fusermount3 is missing; install the fuse3 package"
if [[ $COMPARE == 1 ]]; then
    command -v gocryptfs >/dev/null || die "--compare needs gocryptfs (apt-get install -y gocryptfs)"
fi

# --- pjdfstest -------------------------------------------------------------------------------
PJDFSTEST=$(command -v pjdfstest || true)
if [[ -z $PJDFSTEST && -x ${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest ]]; then
    PJDFSTEST=${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest
fi
if [[ -z $PJDFSTEST ]]; then
    echo "conformance: installing pjdfstest (cargo install --locked pjdfstest; takes a few minutes)" >&2
    timeout 1800 cargo install --locked pjdfstest >&2 || die "cargo install --locked pjdfstest failed"
    PJDFSTEST=${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- envelopefs ------------------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
    if ! (cd "$ROOT" && timeout 1800 cargo build --release) >"$OUT/build.log" 2>&1; then
        tail -n 30 "$OUT/build.log" >&2
        die "cargo build --release failed; full log in $OUT/build.log"
    fi
fi
ENVELOPEFS=$ROOT/target/release/envelopefs
[[ -x $ENVELOPEFS ]] || die "$ENVELOPEFS is missing; run cargo build --release"

# --- scratch space and cleanup ---------------------------------------------------------------
# Short paths: the suite binds Unix sockets deep below the mountpoint, and sun_path holds
# only 108 bytes.
WORK=$(mktemp -d /tmp/efc.XXXXXX)
WORK=$(cd "$WORK" && pwd -P)  # as /proc/self/mountinfo will show it
# The suite switches to unprivileged users, who must be able to reach the mountpoints.
chmod 0755 "$WORK"

SUITE_PID=""  # the running pjdfstest (its timeout wrapper)
MOUNTS=()  # mountpoints made by this script
PIDS=()    # their daemons (children of this script)

is_mounted() {
    # /proc/self/mountinfo field 5 is the mountpoint (spaces escaped as \040; ours have none).
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

cleanup() {
    local rc=$? m pid i
    trap - EXIT INT TERM HUP
    if [[ -n $SUITE_PID ]]; then
        # timeout passes TERM on to pjdfstest; KILL if that is not enough.
        kill -TERM "$SUITE_PID" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$SUITE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SUITE_PID" 2>/dev/null || true
        wait "$SUITE_PID" 2>/dev/null || true
    fi
    # Both daemons unmount themselves on SIGTERM.
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    for m in "${MOUNTS[@]}"; do
        if is_mounted "$m"; then
            # Lazy, so a wedged daemon cannot make the unmount hang.
            timeout 10 fusermount3 -u -z "$m" 2>/dev/null || timeout 10 umount -l "$m" 2>/dev/null || true
        fi
    done
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    local still=0
    for m in "${MOUNTS[@]}"; do
        if is_mounted "$m"; then
            echo "conformance: $m is still mounted; leaving $WORK in place" >&2
            still=1
        fi
    done
    [[ $still == 1 ]] || rm -rf "$WORK"
    [[ -z ${SECONDARY:-} || $SECONDARY == "$WORK"/* ]] || rm -rf "$SECONDARY"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Waits until `mnt` is mounted, or fails if daemon `pid` exits or 30 s pass.
wait_mounted() {
    local mnt=$1 pid=$2 log=$3 i
    for ((i = 0; i < 300; i++)); do
        if is_mounted "$mnt"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "conformance: the daemon for $mnt exited before mounting; its log:" >&2
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    echo "conformance: $mnt did not appear within 30 s; daemon log:" >&2
    tail -n 20 "$log" >&2 || true
    return 1
}

# --- pjdfstest configuration -----------------------------------------------------------------
# Two unprivileged users, each with its primary group (pjdfstest requires that pairing):
# nobody and `tests` (the suite's defaults) when they exist, else nobody and daemon.
primary_group() { getent group "$(id -g "$1")" | cut -d: -f1; }
user_ok() { id -u "$1" >/dev/null 2>&1 && [[ -n $(primary_group "$1") ]]; }
user_ok nobody || die "user nobody is missing (pjdfstest needs it)"
USER2=${CONFORMANCE_USER2:-}
if [[ -z $USER2 ]]; then
    for u in tests daemon bin; do
        if user_ok "$u"; then USER2=$u; break; fi
    done
fi
[[ -n $USER2 ]] || die "no second unprivileged user for pjdfstest; create one: useradd -M -s /usr/sbin/nologin tests"
CONFIG=$WORK/pjdfstest.toml
cat >"$CONFIG" <<EOF
# Linux features, as in pjdfstest's ci/linux-ext4.toml, plus rename_ctime.
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "$(primary_group nobody)"],
  ["$USER2", "$(primary_group "$USER2")"],
]
EOF
# A directory on another filesystem than every one under test, for the EXDEV cases: a tmpfs
# when there is one (the host run's directory is on the filesystem of /tmp).
if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]]; then
    SECONDARY=$(mktemp -d /dev/shm/efc.XXXXXX)
else
    SECONDARY=$WORK/secondary
    mkdir -p "$SECONDARY"
fi
chmod 0755 "$SECONDARY"

# --- running and parsing ---------------------------------------------------------------------
declare -A PASSED FAILED SKIPPED TOTAL COMPLETE
STATUS=0

# Runs pjdfstest in `dir`, saves its output to $OUT/NAME.pjdfstest.log and records the counts.
run_suite() {
    local name=$1 dir=$2 log=$OUT/$1.pjdfstest.log rc=0
    # In the background and waited for, so a signal to this script is handled at once.
    (cd "$dir" && NO_COLOR=1 CLICOLOR=0 RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 exec timeout --kill-after=30 "$TIMEOUT" \
        "$PJDFSTEST" -c "$CONFIG" -p "$dir" -s "$SECONDARY" ${PATTERNS[@]+"${PATTERNS[@]}"}) \
        >"$log" 2>&1 </dev/null &
    SUITE_PID=$!
    wait "$SUITE_PID" || rc=$?
    SUITE_PID=
    # Strip colour codes in case the terminal detection ever turns them back on.
    sed -i 's/\x1b\[[0-9;]*m//g' "$log"
    if [[ $rc == 124 || $rc == 137 ]]; then
        echo "conformance: $name: pjdfstest was stopped after ${TIMEOUT}s; counts are partial" >&2
    fi
    parse_results "$name" "$log"
}

# Counts per-case result lines (`NAME<spaces>STATUS`); cross-checks them with the summary line
# `Summary: F failed, S skipped, P passed, E expected failures, T total`.
parse_results() {
    local name=$1 log=$2 counts summary p f s x
    counts=$(awk '
        /^[A-Za-z_][A-Za-z0-9_:]*[ \t]+(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)[ \t]*$/ {
            line = $0; sub(/[ \t]+$/, "", line)
            if (line ~ /ok$/) p++
            else if (line ~ /FAILED$/ || line ~ /PASSED UNEXPECTEDLY$/) f++
            else if (line ~ /skipped$/) s++
            else x++
        }
        END { printf "%d %d %d %d\n", p, f, s, x }' "$log")
    read -r p f s x <<<"$counts"
    PASSED[$name]=$p
    FAILED[$name]=$((f))
    SKIPPED[$name]=$s
    TOTAL[$name]=$((p + f + s + x))
    COMPLETE[$name]=0
    summary=$(grep -E '^Summary: [0-9]+ failed, [0-9]+ skipped, [0-9]+ passed, [0-9]+ expected failures, [0-9]+ total' "$log" | tail -n 1 || true)
    if [[ -n $summary ]]; then
        local sf ss sp st
        read -r sf ss sp st < <(sed -E 's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, [0-9]+ expected failures, ([0-9]+) total.*/\1 \2 \3 \4/' <<<"$summary")
        if [[ $sf == "$f" && $ss == "$s" && $sp == "$p" && $st == "$((p + f + s + x))" ]]; then
            COMPLETE[$name]=1
        else
            echo "conformance: $name: per-case lines ($p passed, $f failed, $s skipped) disagree with '$summary'; trusting the summary" >&2
            PASSED[$name]=$sp FAILED[$name]=$sf SKIPPED[$name]=$ss TOTAL[$name]=$st
            COMPLETE[$name]=1
        fi
    else
        echo "conformance: $name: no pjdfstest summary (crash or timeout); counts are from the cases that finished" >&2
        STATUS=2
    fi
}

# A daemon that died during the run turns the rest of the suite into ENOTCONN failures.
check_alive() {
    if ! kill -0 "$2" 2>/dev/null; then
        echo "conformance: the $1 daemon died during the run; see $OUT/$1.daemon.log" >&2
        COMPLETE[$1]=0
        STATUS=2
    fi
}

report() {
    local name=$1 log=$OUT/$1.pjdfstest.log note=""
    [[ ${COMPLETE[$name]} == 1 ]] || note=", INCOMPLETE"
    echo "$name: ${PASSED[$name]} passed/${FAILED[$name]} failed (${SKIPPED[$name]} skipped, ${TOTAL[$name]} total$note)"
}

list_failures() {
    local name=$1 log=$OUT/$1.pjdfstest.log
    [[ ${FAILED[$name]} -gt 0 ]] || return 0
    echo "$name failures:"
    # A FAILED line is followed by the panic message (first line tab-indented, then e.g. the
    # `left:`/`right:` lines of an assertion) and maybe a backtrace; show up to 3 message lines.
    awk '
        function flush() { if (test != "") print "  " test (msg == "" ? "" : "  -- " substr(msg, 1, 240)); test = ""; msg = ""; n = 0 }
        /^[A-Za-z_][A-Za-z0-9_:]*[ \t]+(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)[ \t]*$/ {
            flush()
            if ($0 ~ /(FAILED|PASSED UNEXPECTEDLY)[ \t]*$/) test = $1
            next
        }
        /^Backtrace:/ || /^Summary:/ { flush(); next }
        test != "" && n < 3 && NF > 0 { line = $0; gsub(/^[ \t]+/, "", line); msg = msg (n ? " | " : "") line; n++ }
        END { flush() }' "$log" | sort
}

# --- the filesystems under test --------------------------------------------------------------
run_envelopefs() {
    local d=$WORK/e pid
    mkdir -p "$d/mnt"
    head -c 32 /dev/urandom >"$d/keyfile"
    chmod 0600 "$d/keyfile"
    # shellcheck disable=SC2086 # CONFORMANCE_INIT_ARGS is a list of init flags
    "$ENVELOPEFS" init "$d/backing" --keyfile "$d/keyfile" ${CONFORMANCE_INIT_ARGS:-} >"$OUT/envelopefs.init.log" 2>&1 ||
        die "envelopefs init failed; see $OUT/envelopefs.init.log"
    chmod 0755 "$d/mnt"
    : >"$OUT/envelopefs.daemon.log"
    MOUNTS+=("$d/mnt")
    "$ENVELOPEFS" mount "$d/backing" "$d/mnt" --keyfile "$d/keyfile" --allow-other \
        --log-file "$OUT/envelopefs.daemon.log" </dev/null >/dev/null 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_mounted "$d/mnt" "$pid" "$OUT/envelopefs.daemon.log" || die "envelopefs did not mount"
    # The volume root must be reachable by the suite's unprivileged users.
    chmod 0755 "$d/mnt"
    run_suite envelopefs "$d/mnt"
    check_alive envelopefs "$pid"
}

run_gocryptfs() {
    local d=$WORK/g pid
    mkdir -p "$d/cipher" "$d/plain"
    gocryptfs -q -init -extpass 'echo pw' "$d/cipher" >/dev/null 2>&1 || die "gocryptfs -init failed"
    : >"$OUT/gocryptfs.daemon.log"
    MOUNTS+=("$d/plain")
    # -f keeps gocryptfs in the foreground, so the daemon is our child and has a known PID.
    gocryptfs -f -allow_other -extpass 'echo pw' "$d/cipher" "$d/plain" \
        </dev/null >>"$OUT/gocryptfs.daemon.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_mounted "$d/plain" "$pid" "$OUT/gocryptfs.daemon.log" || die "gocryptfs did not mount"
    chmod 0755 "$d/plain"
    run_suite gocryptfs "$d/plain"
    check_alive gocryptfs "$pid"
}

run_host() {
    local d=$WORK/h
    mkdir -p "$d"
    run_suite host "$d"
}

echo "conformance: pjdfstest $("$PJDFSTEST" --version | awk '{print $2}'), users nobody and $USER2, timeout ${TIMEOUT}s per run" >&2
run_envelopefs
NAMES=(envelopefs)
if [[ $COMPARE == 1 ]]; then
    run_gocryptfs
    run_host
    NAMES+=(gocryptfs host)
fi

for n in "${NAMES[@]}"; do
    report "$n"
done
for n in "${NAMES[@]}"; do
    list_failures "$n"
done
echo "raw output: $OUT/<name>.pjdfstest.log; daemon logs: $OUT/<name>.daemon.log"

if [[ $COMPARE == 1 && ${PASSED[envelopefs]} -lt ${PASSED[gocryptfs]} ]]; then
    echo "conformance: envelopefs passes fewer cases than gocryptfs (${PASSED[envelopefs]} < ${PASSED[gocryptfs]})" >&2
    [[ $STATUS == 2 ]] || STATUS=1
fi
exit "$STATUS"
