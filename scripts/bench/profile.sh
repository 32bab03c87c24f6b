#!/usr/bin/env bash
# Profiles the envelopefs daemon during one workload of scripts/bench.sh, with perf (software
# cpu-clock event: works in VMs without hardware counters) and DWARF call graphs.
#
# Usage: scripts/bench/profile.sh [options] WORKLOAD
#
#   WORKLOAD            seqwrite | seqread | randread | randwrite | untar | lsr | catall | rm
#   --bin PATH          envelopefs binary (default target/release/envelopefs; release builds
#                       carry line tables: profile.release debug = 1)
#   --threads N         envelopefs --threads
#   --jobs N            fio jobs for randread/randwrite (default 1)
#   --mib N             file size for seq* (default 1024) and rand* (default 256)
#   --seconds S         fio runtime (default 10)
#   --tree DIR          tree for untar/lsr/catall/rm (default /usr/share)
#   --freq HZ           sampling frequency (default 499)
#   --out DIR           keep perf.data and the reports here (default: a temp dir, removed)
#   --top N             lines of each report (default 40)
#   --strace            instead of perf, count the daemon's syscalls with wall time per call
#                       (strace -f -c -w: where a workload waits rather than computes; slows
#                       the daemon down, so look at counts and shares, not at the total time)
#   --env VAR=VALUE     extra environment for the daemon (repeatable), e.g.
#                       --env GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=18446744073709551615
#
# Prints: daemon CPU seconds (user/sys), the workload's time, the hottest symbols by self
# time (user and kernel) and by inclusive time. Needs root, perf, fio (rand*).

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$ROOT/target/release/envelopefs THREADS="" JOBS=1 MIB="" SECS=10 TREE=/usr/share FREQ=499 OUT="" TOP=40
ENVS=() WL="" STRACE=0
die() { echo "profile.sh: $*" >&2; exit 2; }
while (($#)); do
    case $1 in
        --bin) BIN=${2:?}; shift ;;
        --threads) THREADS=${2:?}; shift ;;
        --jobs) JOBS=${2:?}; shift ;;
        --mib) MIB=${2:?}; shift ;;
        --seconds) SECS=${2:?}; shift ;;
        --tree) TREE=${2:?}; shift ;;
        --freq) FREQ=${2:?}; shift ;;
        --out) OUT=${2:?}; shift ;;
        --top) TOP=${2:?}; shift ;;
        --env) ENVS+=("${2:?}"); shift ;;
        --strace) STRACE=1 ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) WL=$1 ;;
    esac
    shift
done
case $WL in seqwrite|seqread) : "${MIB:=1024}" ;; randread|randwrite) : "${MIB:=256}" ;; untar|lsr|catall|rm) ;; *) die "workload?" ;; esac
command -v perf >/dev/null || die "perf is not installed (apt-get install -y linux-perf)"
[[ -x $BIN ]] || die "no binary at $BIN"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envfs-profile.XXXXXX")
B=$WORK/backing M=$WORK/mnt PID="" PERF=""
mkdir -p "$B" "$M"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $PERF ]] && kill -INT "$PERF" 2>/dev/null && wait "$PERF" 2>/dev/null
    if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$PID" 2>/dev/null && kill -KILL "$PID" 2>/dev/null
    fi
    grep -qF " $M " /proc/self/mounts && { timeout 20 umount "$M" 2>/dev/null || timeout 20 umount -l "$M" || true; }
    if [[ -n $OUT ]]; then mkdir -p "$OUT"; cp "$WORK"/*.txt "$WORK"/perf.data "$OUT"/ 2>/dev/null || true; fi
    grep -qF " $M " /proc/self/mounts || timeout 600 rm -rf --one-file-system "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

head -c 32 /dev/urandom >"$WORK/kf"
timeout 60 "$BIN" init "$B" --keyfile "$WORK/kf" >/dev/null
extra=(); [[ -n $THREADS ]] && extra=(--threads "$THREADS")
env "${ENVS[@]}" "$BIN" mount "$B" "$M" --keyfile "$WORK/kf" "${extra[@]}" </dev/null >"$WORK/daemon.log" 2>&1 &
PID=$!
for _ in $(seq 300); do timeout 5 mountpoint -q "$M" && break; kill -0 "$PID" || die "daemon exited"; sleep 0.1; done
timeout 5 mountpoint -q "$M" || die "not mounted"

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Untimed preparation
case $WL in
    seqread) timeout 600 dd if=/dev/zero of="$M/seq.dat" bs=1M count="$MIB" conv=fsync status=none; drop ;;
    rand*) timeout 600 dd if=/dev/urandom of="$M/rand.dat" bs=1M count="$MIB" conv=fsync status=none ;;
    untar) tar -C "$TREE" --exclude=./package-lists -cf "$WORK/tree.tar" . 2>/dev/null || true; mkdir "$M/tree" ;;
    lsr|catall|rm) tar -C "$TREE" --exclude=./package-lists -cf "$WORK/tree.tar" . 2>/dev/null || true
        mkdir "$M/tree"; timeout 1800 tar -xf "$WORK/tree.tar" -C "$M/tree"
        if [[ $WL != rm ]]; then drop; ls -lR "$B" >/dev/null; find "$B" -type f -size -20M -exec cat {} + >/dev/null; fi ;;
esac

ticks() { local s; s=$(cat "/proc/$PID/stat"); s=${s##*) }; read -r -a a <<<"$s"; echo "${a[11]} ${a[12]}"; }
read -r u0 s0 < <(ticks)
if ((STRACE)); then
    strace -f -c -w -S time -o "$WORK/strace.txt" -p "$PID" 2>/dev/null &
else
    perf record -q -e cpu-clock -F "$FREQ" -g --call-graph dwarf,8192 -p "$PID" -o "$WORK/perf.data" 2>"$WORK/perf-record.txt" &
fi
PERF=$!
sleep 1
t0=${EPOCHREALTIME/[.,]/}
case $WL in
    seqwrite) timeout 1800 dd if=/dev/zero of="$M/seq.dat" bs=1M count="$MIB" conv=fsync status=none ;;
    seqread) timeout 1800 dd if="$M/seq.dat" of=/dev/null bs=1M status=none ;;
    randread|randwrite)
        timeout $((SECS + 600)) fio --name=p --filename="$M/rand.dat" --rw="$WL" --bs=4k --size="${MIB}M" \
            --numjobs="$JOBS" --time_based --runtime="$SECS" --direct=0 --ioengine=psync --invalidate=1 \
            --group_reporting $([[ $WL == randwrite ]] && echo --end_fsync=1) --output-format=terse --terse-version=3 >"$WORK/fio.txt"
        awk -F';' -v w="$WL" '{print (w=="randread" ? $8 : $49) " IOPS"}' "$WORK/fio.txt" ;;
    untar) timeout 1800 tar -xf "$WORK/tree.tar" -C "$M/tree" ;;
    lsr) timeout 1800 ls -lR "$M/tree" >/dev/null ;;
    catall) timeout 1800 find "$M/tree" -type f -exec cat {} + >/dev/null ;;
    rm) timeout 1800 rm -rf "$M/tree" ;;
esac
t1=${EPOCHREALTIME/[.,]/}
read -r u1 s1 < <(ticks)
kill -INT "$PERF"; wait "$PERF" || true; PERF=""
hz=$(getconf CLK_TCK)
{
    echo "workload $WL: $(awk -v us=$((t1 - t0)) 'BEGIN {printf "%.2f s", us/1e6}')" \
        "daemon user $(awk -v t=$((u1 - u0)) -v hz="$hz" 'BEGIN {printf "%.2f", t/hz}') s," \
        "sys $(awk -v t=$((s1 - s0)) -v hz="$hz" 'BEGIN {printf "%.2f", t/hz}') s${ENVS[*]:+ (env ${ENVS[*]})}"
} | tee "$WORK/summary.txt"
if ((STRACE)); then
    sleep 1
    echo "--- daemon syscalls (strace -c -w: wall time inside each call)"
    head -n "$TOP" "$WORK/strace.txt"
    exit 0
fi
echo "--- self time by symbol (top $TOP)"
perf report -i "$WORK/perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.3 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -n "$TOP" | tee "$WORK/self.txt"
echo "--- inclusive time by symbol (top $TOP)"
perf report -i "$WORK/perf.data" --children --sort sym --stdio -g none --percent-limit 1 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -n "$TOP" | tee "$WORK/children.txt"
