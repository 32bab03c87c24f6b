#!/usr/bin/env bash
# Profiles envelopefs-uring's daemon during its untar inside one round of scripts/bench.sh, so
# the same requests can be compared across contexts (which filesystems are mounted, which
# workloads ran before): a daemon whose untar is slower in one context than another shows
# where its extra CPU goes. perf (cpu-clock, no call graphs) records the daemon for the first
# SECONDS of its untar; the hottest symbols are printed with bench.sh's untar line.
#
# Usage: scripts/bench/context-profile.sh [options]
#
#   --only LIST       bench.sh --only (default envelopefs-uring,securefs; must include
#                     envelopefs-uring, which untars first in round 1, and not envelopefs)
#   --workloads LIST  bench.sh --workloads, ending in untar (default untar)
#   --tree DIR        bench.sh --tree (default /usr/lib/google-cloud-sdk/lib)
#   --seconds S       how long to record (default 8; keep it under the untar's time)
#   --out DIR         keep perf.data, bench.sh's log and report here (default: a temp dir)
#
# Example (the two contexts of docs/PERFORMANCE.md, issue 17 sixth session):
#   scripts/bench/context-profile.sh --workloads seqwrite,seqread,randread1,randread2,randwrite1,randwrite2,untar
#   scripts/bench/context-profile.sh --workloads seqwrite,seqread,randread1,randread2,randwrite1,randwrite2,untar \
#       --only envelopefs-uring,envelopefs-classic,gocryptfs,securefs,cryfs,bindfs,passthrough_hp-uring
#
# Needs root, perf, and what bench.sh needs; uses a fresh 40 GiB ext4 and --uring on, builds
# nothing (cargo build --release first).

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ONLY=envelopefs-uring,securefs WLS=untar TREE=/usr/lib/google-cloud-sdk/lib SECS=8 OUT=""
die() { echo "context-profile.sh: $*" >&2; exit 2; }
while (($#)); do
    case $1 in
        --only) ONLY=${2:?}; shift ;;
        --workloads) WLS=${2:?}; shift ;;
        --tree) TREE=${2:?}; shift ;;
        --seconds) SECS=${2:?}; shift ;;
        --out) OUT=${2:?}; shift ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[[ $(id -u) == 0 ]] || die "needs root"
command -v perf >/dev/null || die "needs perf (apt-get install -y linux-perf)"
[[ ,$ONLY, == *,envelopefs-uring,* ]] || die "--only must include envelopefs-uring"
[[ ,$ONLY, != *,envelopefs,* ]] || die "leave the plain envelopefs target out (it would untar first)"
[[ ,$WLS, == *,untar, ]] || die "--workloads must end in untar"
if [[ -z $OUT ]]; then
    OUT=$(mktemp -d "${TMPDIR:-/var/tmp}/envfs-ctxprof.XXXXXX")
    trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"
LOG=$OUT/bench.log
"$ROOT/scripts/bench.sh" --no-build --fresh-ext4 40 --tree "$TREE" --uring on --rounds 1 \
    --fio-runtime 10 --only "$ONLY" --workloads "$WLS" --out "$OUT/report.md" >"$LOG" 2>&1 &
BPID=$!
# Round 1 runs the filesystems in bench.sh's own order, where envelopefs-uring comes first
# unless the plain `envelopefs` target is in the list: its untar starts right after the
# round's untar probe line.
until grep -q "round 1/1  untar  cpu probe" "$LOG" 2>/dev/null; do
    kill -0 "$BPID" 2>/dev/null || { tail -5 "$LOG" >&2; die "bench.sh ended before the untar"; }
    sleep 0.2
done
pid=$(pgrep -f "envelopefs mount .*/backing-envelopefs-uring " | head -n 1) || true
[[ -n $pid ]] || die "envelopefs-uring's daemon not found"
perf record -F 999 -p "$pid" -o "$OUT/perf.data" -- sleep "$SECS" >/dev/null 2>&1 || true
wait "$BPID" || die "bench.sh failed (log: $LOG)"
grep "untar  envelopefs-uring" "$LOG" || true
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.8 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -n 25
