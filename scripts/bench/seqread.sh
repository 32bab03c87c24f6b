#!/usr/bin/env bash
# Cold sequential reads side by side, with where the CPU goes: each filesystem's file is read
# with `dd bs=1M` after `drop_caches`, the filesystems taking turns (the order alternating every
# round), and each read prints its speed, the daemon's CPU time and the whole machine's busy CPU
# time (all CPUs, /proc/stat) over the same seconds. A read that keeps the machine near 100 %
# of its CPUs is bound by CPU; one that leaves them idle waits on the disk or on its pipeline.
# Behind docs/PERFORMANCE.md §"Issue 17, fourth session".
#
# Usage: scripts/bench/seqread.sh [--rounds N] [--mib N] [NAME=SPEC...]
#
#   SPEC      envelopefs[,transport=T][,bin=PATH][,env=VAR=VALUE...] | securefs | gocryptfs
#             (env= sets a variable for that daemon only, e.g. env=ENVELOPEFS_URING_NO_COURTESY=1)
#             (default: uring=envelopefs,transport=uring securefs=securefs)
#   --rounds  rounds (default 6)
#   --mib     file size in MiB (default 1024)
#
# Work happens under ${TMPDIR:-/var/tmp}: use a fresh ext4 there (docs/PERFORMANCE.md §Why
# --fresh-ext4). Needs root (drop_caches, mounts), target/release/envelopefs (cargo build
# --release) and the peers named (apt-get install -y securefs gocryptfs). Sets
# /sys/module/fuse/parameters/enable_uring to Y when a config asks for io_uring and puts the old
# value back; every mount made here is unmounted on exit, and only daemons started here are
# stopped.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS=6 MIB=1024
while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --mib) MIB=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        -*) echo "seqread.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $MIB =~ ^[1-9][0-9]*$ ]] || { echo "seqread.sh: --rounds and --mib take positive integers" >&2; exit 2; }
(($#)) || set -- uring=envelopefs,transport=uring securefs=securefs
[[ $(id -u) == 0 ]] || { echo "seqread.sh: needs root (drop_caches, mounts)" >&2; exit 2; }
PARAM=/sys/module/fuse/parameters/enable_uring
OLD=$(cat "$PARAM" 2>/dev/null || true)
W=$(mktemp -d "${TMPDIR:-/var/tmp}/efs-seqread.XXXXXX")
declare -a NAMES MNTS PIDS KINDS
cleanup() {
    local i
    for i in "${!MNTS[@]}"; do
        if [[ ${KINDS[$i]} == envelopefs ]]; then
            kill -TERM "${PIDS[$i]}" 2>/dev/null || true      # SIGTERM = clean unmount
        else
            timeout 20 umount "${MNTS[$i]}" 2>/dev/null || kill -TERM "${PIDS[$i]}" 2>/dev/null || true
        fi
    done
    for i in "${!PIDS[@]}"; do wait "${PIDS[$i]}" 2>/dev/null || true; done
    for i in "${!MNTS[@]}"; do timeout 5 mountpoint -q "${MNTS[$i]}" && umount -l "${MNTS[$i]}" 2>/dev/null; done
    [[ -n $OLD && -w $PARAM ]] && echo "$OLD" >"$PARAM" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
head -c 32 /dev/urandom >"$W/key"
printf 'seqread-bench-password\n' >"$W/password"
for c in "$@"; do
    name=${c%%=*} spec=${c#*=}
    IFS=, read -r -a parts <<<"$spec"
    kind=${parts[0]} b=$W/$name/b m=$W/$name/m
    mkdir -p "$b" "$m"
    case $kind in
        envelopefs)
            bin=$ROOT/target/release/envelopefs args=() envs=()
            for p in "${parts[@]:1}"; do
                case $p in
                    transport=*) args+=(--transport "${p#transport=}")
                        [[ ${p#transport=} == uring && -w $PARAM ]] && echo Y >"$PARAM" ;;
                    bin=*) bin=${p#bin=} ;;
                    env=*=*) envs+=("${p#env=}") ;;
                    *) echo "seqread.sh: unknown part '$p' in $c" >&2; exit 2 ;;
                esac
            done
            [[ -x $bin ]] || { echo "seqread.sh: no envelopefs binary at $bin (cargo build --release)" >&2; exit 2; }
            "$bin" init "$b" --keyfile "$W/key" >"$W/$name.log" 2>&1
            env ${envs[@]+"${envs[@]}"} "$bin" mount "$b" "$m" --keyfile "$W/key" "${args[@]}" >>"$W/$name.log" 2>&1 &
            ;;
        securefs)
            securefs create --format 4 --keyfile "$W/key" --pbkdf pkcs5-pbkdf2-hmac-sha256 \
                --rounds 1000 "$b" >"$W/$name.log" 2>&1
            securefs mount --keyfile "$W/key" "$b" "$m" >>"$W/$name.log" 2>&1 &
            ;;
        gocryptfs)
            gocryptfs -init -q -passfile "$W/password" -scryptn 10 "$b" >"$W/$name.log" 2>&1
            gocryptfs -fg -q -passfile "$W/password" "$b" "$m" >>"$W/$name.log" 2>&1 &
            ;;
        *) echo "seqread.sh: unknown filesystem '$kind' in $c (envelopefs, securefs, gocryptfs)" >&2; exit 2 ;;
    esac
    PIDS+=($!) NAMES+=("$name") MNTS+=("$m") KINDS+=("$kind")
    for ((i = 0; i < 100; i++)); do timeout 5 mountpoint -q "$m" && break; sleep 0.1; done
    timeout 5 mountpoint -q "$m" || { echo "seqread.sh: $name did not mount (log: $(tail -n 2 "$W/$name.log"))" >&2; exit 1; }
    timeout 600 dd if=/dev/zero of="$m/f" bs=1M count="$MIB" conv=fsync status=none
done
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }  # user nice system irq softirq
cpu_of() { # utime + stime; the fields are counted after comm's ")", which may hold spaces
    local s a; s=$(<"/proc/$1/stat"); read -r -a a <<<"${s##*) }"; echo $(( a[11] + a[12] )); }
HZ=$(getconf CLK_TCK) NCPU=$(nproc) n=${#NAMES[@]}
echo "cold sequential read of $MIB MiB, $ROUNDS rounds; machine = busy time of all $NCPU CPUs"
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
        i=$(( r % 2 ? k : n - 1 - k ))
        sync; echo 3 >/proc/sys/vm/drop_caches
        c0=$(cpu_of "${PIDS[$i]}") m0=$(busy) t0=$(date +%s%N)
        timeout 600 dd if="${MNTS[$i]}/f" of=/dev/null bs=1M status=none
        t1=$(date +%s%N) m1=$(busy) c1=$(cpu_of "${PIDS[$i]}")
        awk -v r="$r" -v name="${NAMES[$i]}" -v b=$(( MIB * 1048576 )) -v ns=$(( t1 - t0 )) \
            -v c=$(( c1 - c0 )) -v m=$(( m1 - m0 )) -v hz="$HZ" -v ncpu="$NCPU" 'BEGIN {
            s = ns / 1e9
            printf "round %d  %-12s %7.0f MB/s  %5.2f s  daemon CPU %5.2f s  machine CPU %5.2f s (%3.0f %% of %d CPUs)\n",
                r, name, b / s / 1e6, s, c / hz, m / hz, 100 * m / hz / s / ncpu, ncpu }'
    done
done
