#!/usr/bin/env bash
# The transport experiments behind docs/PERFORMANCE.md §"FUSE over io_uring": small, focused
# A/B runs of envelopefs mounts that differ only in transport or ring setup, interleaved.
#
# Usage: scripts/bench/transport.sh WORKLOAD [CONFIG...]
#
#   WORKLOAD  randread   fio 4 KiB random reads, one job, 6 s, 128 MiB file, with the number of
#                        CPU migrations in the same seconds (perf stat -a, when perf exists)
#             hog        the same random reads and an untar of /usr/include with two CPU hogs
#                        (`yes`) running: what the ring threads' courtesy does on a busy machine
#             untar      untar of /usr/include and rm -rf, 3 interleaved rounds, BACKING on tmpfs
#             seqread    dd of a 1 GiB file after drop_caches (backing re-warmed), 3 times
#   CONFIG    NAME=TRANSPORT[,threads=N][,env=VAR=VALUE][,bin=PATH] (default: uring=uring
#             classic=classic); bin: another envelopefs binary for this config (an older build)
#             e.g. nocourtesy=uring,env=ENVELOPEFS_URING_NO_COURTESY=1 old=uring,bin=/tmp/old
#
# Needs root (mount, drop_caches, enable_uring), fio, and target/release/envelopefs (built with
# `cargo build --release`). Sets /sys/module/fuse/parameters/enable_uring to Y for the run and
# puts the old value back. Every mount is made here and unmounted on exit; only daemons this
# script started are waited for.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
B=${ENVELOPEFS_BIN:-$ROOT/target/release/envelopefs}
WL=${1:?usage: transport.sh randread|hog|untar|seqread [NAME=TRANSPORT[,threads=N][,env=V=X]...]}
shift
(($#)) || set -- uring=uring classic=classic
[[ -x $B ]] || { echo "transport.sh: build first: cargo build --release" >&2; exit 2; }
PARAM=/sys/module/fuse/parameters/enable_uring
OLD=$(cat "$PARAM" 2>/dev/null || true)
WDIR=/dev/shm
[[ $WL == seqread || $WL == randread ]] && WDIR=/var/tmp
W=$(mktemp -d "$WDIR/efs-transport.XXXXXX")
declare -a NAMES MNTS
cleanup() {
    for m in "${MNTS[@]}"; do "$B" unmount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n $OLD ]] && echo "$OLD" >"$PARAM" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
[[ -w $PARAM ]] && echo Y >"$PARAM"
echo secretpass >"$W/pass"
for c in "$@"; do
    name=${c%%=*} spec=${c#*=}
    IFS=, read -r -a parts <<<"$spec"
    tr=${parts[0]} args=() envs=() bin=$B
    for p in "${parts[@]:1}"; do
        case $p in
            threads=*) args+=(--threads "${p#threads=}") ;;
            env=*) envs+=("${p#env=}") ;;
            bin=*) bin=${p#bin=}; [[ -x $bin ]] || { echo "transport.sh: no binary at $bin" >&2; exit 2; } ;;
            *) echo "transport.sh: unknown config part $p" >&2; exit 2 ;;
        esac
    done
    mkdir -p "$W/$name/b" "$W/$name/m"
    "$bin" init --passfile "$W/pass" "$W/$name/b" >/dev/null 2>&1
    env "${envs[@]}" "$bin" mount --passfile "$W/pass" --transport "$tr" "${args[@]}" \
        "$W/$name/b" "$W/$name/m" >"$W/$name.log" 2>&1 &
    NAMES+=("$name") MNTS+=("$W/$name/m")
done
for m in "${MNTS[@]}"; do
    for _ in $(seq 50); do mountpoint -q "$m" && break; sleep 0.1; done
    mountpoint -q "$m" || { echo "transport.sh: $m did not mount" >&2; exit 2; }
done
warm() { echo 3 >/proc/sys/vm/drop_caches; find "$W/$1/b" -type f -exec cat {} + >/dev/null; }
fio_rr() { # dir [wrapper...] → IOPS
    local d=$1; shift
    timeout 60 "$@" fio --name=r --filename="$d/rand.dat" --rw=randread --bs=4k --size=128M \
        --numjobs=1 --time_based --runtime=6 --direct=0 --ioengine=psync --invalidate=1 \
        --output-format=json --output="$W/fio.json" >/dev/null 2>&1
    python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' "$W/fio.json"
}
tar_src=$W/inc.tar
case $WL in
    randread | hog)
        for n in "${NAMES[@]}"; do dd if=/dev/urandom of="$W/$n/m/rand.dat" bs=1M count=128 status=none; done
        sync
        [[ $WL == hog ]] && tar -C /usr -cf "$tar_src" include
        for n in "${NAMES[@]}"; do
            warm "$n"
            if [[ $WL == hog ]]; then
                yes >/dev/null & h1=$!
                yes >/dev/null & h2=$!
                iops=$(fio_rr "$W/$n/m")
                s=$EPOCHREALTIME; timeout 300 tar -C "$W/$n/m" -xf "$tar_src"; e=$EPOCHREALTIME
                kill "$h1" "$h2"; wait "$h1" "$h2" 2>/dev/null || true
                printf '%-12s with 2 CPU hogs: randread1 %s IOPS, untar %.2f s\n' "$n" "$iops" "$(echo "$e - $s" | bc)"
            elif command -v perf >/dev/null; then
                iops=$(fio_rr "$W/$n/m" perf stat -a -e cpu-migrations -o "$W/perf.txt" --)
                mig=$(awk '/cpu-migrations/ {print $1}' "$W/perf.txt")
                printf '%-12s randread1 %s IOPS, %s CPU migrations in the run\n' "$n" "$iops" "$mig"
            else
                printf '%-12s randread1 %s IOPS\n' "$n" "$(fio_rr "$W/$n/m")"
            fi
        done
        ;;
    untar)
        tar -C /usr -cf "$tar_src" include
        for r in 1 2 3; do for n in "${NAMES[@]}"; do
            s=$EPOCHREALTIME; tar -C "$W/$n/m" -xf "$tar_src"; e=$EPOCHREALTIME
            s2=$EPOCHREALTIME; rm -rf "$W/$n/m/include"; e2=$EPOCHREALTIME
            printf '%-12s round %s: untar %.2f s, rm -rf %.2f s\n' "$n" "$r" "$(echo "$e - $s" | bc)" "$(echo "$e2 - $s2" | bc)"
        done; done
        ;;
    seqread)
        for n in "${NAMES[@]}"; do dd if=/dev/zero of="$W/$n/m/big" bs=1M count=1024 status=none; done
        sync
        for r in 1 2 3; do for n in "${NAMES[@]}"; do
            warm "$n"
            printf '%-12s round %s: %s\n' "$n" "$r" "$(dd if="$W/$n/m/big" of=/dev/null bs=1M 2>&1 | awk '/copied/ {print $(NF-1), $NF}')"
        done; done
        ;;
    *) echo "transport.sh: unknown workload $WL" >&2; exit 2 ;;
esac
