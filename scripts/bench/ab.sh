#!/usr/bin/env bash
# A/B comparison of envelopefs builds (or mount options) on the tree workloads of
# scripts/bench.sh: each variant is mounted on a fresh backing directory, the workloads run in
# interleaved rounds (the order rotating every round), and the medians are printed with every
# round and the daemon's CPU time. For measuring one change against the commit before it,
# where bench.sh (one envelopefs against the peers) cannot put both side by side.
#
# Usage: scripts/bench/ab.sh [options] NAME=BINARY[:EXTRA MOUNT ARGS] NAME=BINARY...
#
#   --rounds N        rounds (default 5)
#   --tree DIR        source tree to tar and untar (default /usr/include)
#   --workloads a,b   from untar,lsr,catall,rm (default untar,catall,rm; lsr, catall and rm
#                     need untar in the same list, which leaves the tree for them)
#   --env NAME:VAR=VALUE
#                     environment for variant NAME's daemon (repeatable), e.g.
#                     --env nc:ENVELOPEFS_URING_NO_COURTESY=1
#   --dirty           before each timed untar, untar the tree once more into a plain directory
#                     of the work dir, without sync: the timed untar then runs while the
#                     backing filesystem writes that back, as in scripts/bench.sh where the
#                     filesystem before it in the round has just untarred the same tree
#                     (default: sync first, so every untar starts clean)
#
# Example (old and new build of the same tree):
#   git stash; cargo build --release; cp target/release/envelopefs /var/tmp/envfs-old
#   git stash pop; cargo build --release
#   TMPDIR=/mnt/fresh-ext4 scripts/bench/ab.sh old=/var/tmp/envfs-old new=target/release/envelopefs
#
# Work happens under ${TMPDIR:-/var/tmp} (use a fresh ext4 there: see docs/PERFORMANCE.md
# §Why --fresh-ext4). Needs root (drop_caches). Every mount is unmounted on exit.

set -euo pipefail
ROUNDS=5 TREE=/usr/include WLS=untar,catall,rm DIRTY=0
die() { echo "ab.sh: $*" >&2; exit 2; }
SPECS=()
declare -A ENVS
while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --tree) TREE=${2:?}; shift ;;
        --workloads) WLS=${2:?}; shift ;;
        --env) [[ ${2:?} == ?*:?*=* ]] || die "--env takes NAME:VAR=VALUE, got $2"
               ENVS[${2%%:*}]+=" ${2#*:}"; shift ;;
        --dirty) DIRTY=1 ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *=*) SPECS+=("$1") ;;
        *) die "expected NAME=BINARY, got $1" ;;
    esac
    shift
done
((${#SPECS[@]} >= 1)) || die "give at least one NAME=BINARY (see --help)"
[[ $(id -u) == 0 ]] || die "needs root (drop_caches)"
IFS=, read -ra WL <<<"$WLS"
TMO=600

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envfs-ab.XXXXXX")
declare -A PID MNT BACK
NAMES=()
cleanup() {
    local n
    for n in "${NAMES[@]}"; do
        if mountpoint -q "${MNT[$n]}"; then
            timeout 20 fusermount3 -u "${MNT[$n]}" 2>/dev/null || timeout 10 umount -l "${MNT[$n]}" || true
        fi
        if [[ -n ${PID[$n]:-} ]]; then
            timeout 20 tail --pid="${PID[$n]}" -f /dev/null || kill -9 "${PID[$n]}" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tar -cf "$WORK/tree.tar" -C "$(dirname "$TREE")" "$(basename "$TREE")"
for spec in "${SPECS[@]}"; do
    n=${spec%%=*} rest=${spec#*=}
    bin=${rest%%:*} extra=()
    [[ $rest == *:* ]] && read -ra extra <<<"${rest#*:}"
    [[ -x $bin ]] || die "$n: no executable at $bin"
    NAMES+=("$n")
    BACK[$n]=$WORK/$n/backing MNT[$n]=$WORK/$n/mnt
    mkdir -p "${BACK[$n]}" "${MNT[$n]}"
    head -c 32 /dev/urandom >"$WORK/$n/key"
    timeout 120 "$bin" init "${BACK[$n]}" --keyfile "$WORK/$n/key" >"$WORK/$n/log" 2>&1 || die "$n: init failed"
    read -ra envs <<<"${ENVS[$n]:-}"
    env ${envs[@]+"${envs[@]}"} "$bin" mount "${BACK[$n]}" "${MNT[$n]}" --keyfile "$WORK/$n/key" "${extra[@]}" </dev/null >>"$WORK/$n/log" 2>&1 &
    PID[$n]=$!
    for _ in $(seq 100); do mountpoint -q "${MNT[$n]}" && break; sleep 0.1; done
    mountpoint -q "${MNT[$n]}" || die "$n: no mount (log: $(tail -3 "$WORK/$n/log"))"
done

ticks() { # utime + stime; the fields are counted after comm's ")", which may hold spaces
    local s a; s=$(<"/proc/$1/stat"); read -r -a a <<<"${s##*) }"; echo $(( a[11] + a[12] )); }
now() { date +%s.%N; }
declare -A RES
for ((r = 1; r <= ROUNDS; r++)); do
    for w in "${WL[@]}"; do
        for ((k = 0; k < ${#NAMES[@]}; k++)); do
            n=${NAMES[$(( (k + r) % ${#NAMES[@]} ))]} m=${MNT[$n]}
            case $w in
                untar)
                    timeout $TMO rm -rf "$m/tree" "$WORK/plain"; mkdir -p "$m/tree" "$WORK/plain"; sync
                    ((DIRTY)) && timeout $TMO tar -xf "$WORK/tree.tar" -C "$WORK/plain"
                    cat "$WORK/tree.tar" >/dev/null ;;
                lsr|catall)
                    # Cold mount caches, warm backing (as scripts/bench.sh does).
                    sync; echo 3 >/proc/sys/vm/drop_caches
                    timeout $TMO find "${BACK[$n]}" -type f -exec cat {} + >/dev/null 2>&1 || true
                    timeout $TMO ls -lR "${BACK[$n]}" >/dev/null 2>&1 || true ;;
                rm) sync ;;
                *) die "unknown workload $w" ;;
            esac
            c0=$(ticks "${PID[$n]}") t0=$(now)
            case $w in
                untar) timeout $TMO tar -xf "$WORK/tree.tar" -C "$m/tree" ;;
                lsr) timeout $TMO ls -lR "$m/tree" >/dev/null ;;
                catall) timeout $TMO find "$m/tree" -type f -exec cat {} + >/dev/null ;;
                rm) timeout $TMO rm -rf "$m/tree" ;;
            esac
            t1=$(now) c1=$(ticks "${PID[$n]}")
            t=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
            c=$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz}')
            RES[$n,$w]+=" $t"
            echo "round $r  $w  $n: $t s (daemon CPU $c s)"
        done
    done
done
echo
echo "| workload | $(printf '%s | ' "${NAMES[@]}")"
echo "|---|$(printf -- '---|%.0s' "${NAMES[@]}")"
for w in "${WL[@]}"; do
    row="| $w (s, median) |"
    for n in "${NAMES[@]}"; do
        med=$(tr ' ' '\n' <<<"${RES[$n,$w]}" | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
        row+=" $med (${RES[$n,$w]# }) |"
    done
    echo "$row"
done
