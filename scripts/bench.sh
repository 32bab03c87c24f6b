#!/usr/bin/env bash
# Side-by-side benchmark of envelopefs against gocryptfs, securefs (lite), CryFS, bindfs and
# libfuse's passthrough_hp (plain FUSE passthroughs: the ceilings for any FUSE filesystem, the
# latter also over io_uring) and the native directory (the physical limit). See
# docs/PERFORMANCE.md for what each workload measures and the latest results.
#
# Usage: scripts/bench.sh [options]
#
#   --rounds N          interleaved rounds (default 3; 1 with --quick)
#   --only a,b          filesystems to run, from: envelopefs,envelopefs-uring,envelopefs-classic,
#                       envelopefs-plain,gocryptfs,securefs,cryfs,bindfs,passthrough_hp,
#                       passthrough_hp-uring,native (default: all but envelopefs-plain, and the
#                       three transport targets below only when enable_uring is Y for the run; a
#                       peer that is not installed is skipped with a note).
#                       envelopefs: the daemon's default transport (or --transport's).
#                       envelopefs-uring / envelopefs-classic: mounted with `--transport uring` /
#                       `--transport classic`. envelopefs-plain: envelopefs on a volume made with
#                       `init --plaintext-names` (what name encryption costs).
#                       passthrough_hp: libfuse 3.18's example/passthrough_hp with --nopassthrough
#                       (every read and write goes through the daemon, like ours), on the classic
#                       /dev/fuse transport; passthrough_hp-uring: the same with `-o io_uring`.
#                       The transport targets (envelopefs-uring, envelopefs-classic,
#                       passthrough_hp-uring) are not skipped when they fail to mount: they stay in
#                       the table as FAIL, and so does an io_uring one whose daemon holds no
#                       io_uring ring after the mount (it fell back to /dev/fuse reads)
#   --transport T       pass `--transport T` (auto, uring or classic) to the envelopefs and
#                       envelopefs-plain targets (default: none, the daemon's default)
#   --uring on|off      as root, set /sys/module/fuse/parameters/enable_uring to Y (on) or N
#                       (off) before mounting, and put the previous value back on any exit (after
#                       the unmounts; unless someone else changed it during the run: then theirs
#                       stands). The setting is machine-wide: FUSE mounts made by others during
#                       the run see it too. Default: leave it as it is. If the file is missing (a
#                       kernel without FUSE over io_uring) the run goes on with a note
#   --passthrough-hp P  passthrough_hp binary (default: env PASSTHROUGH_HP, else
#                       target/passthrough_hp/passthrough_hp as scripts/build-passthrough-hp.sh
#                       builds it, libfuse linked statically; when absent the two passthrough_hp
#                       targets are skipped with a note)
#   --workloads a,b     workloads to run, from: seqwrite,seqread,randread1,randread2,randwrite1,
#                       randwrite2,untar,lsr,catall,rm (default: all)
#   --quick             smaller sizes for a smoke test: 128 MiB sequential, 32 MiB random-I/O
#                       file, 3 s fio runs, /usr/include as the tree
#   --out FILE          also write the markdown report to FILE (raw per-round values go to
#                       FILE.tsv)
#   --dir DIR           where the work directory is created (default ${TMPDIR:-/var/tmp}); it must
#                       not be a tmpfs unless --tmpfs is given
#   --tmpfs             put the work directory on /dev/shm (a tmpfs), to take the disk out
#   --fresh-ext4 GIB    put the work directory on a freshly made, journaled ext4 (a sparse
#                       GIB-GiB image in --dir, loop-mounted; removed afterwards). Use it when
#                       the disk's own filesystem is unrepresentative: this VM's root ext4 has
#                       no journal, and there ext4 scans past recently deleted inodes on every
#                       create (native untar of /usr/include: 5.7 s there, 0.44 s on a fresh
#                       journaled ext4)
#   --threads N         envelopefs --threads (default: the daemon's own default)
#   --bin PATH          envelopefs binary to use (default: build target/release/envelopefs)
#   --no-build          use the existing target/release/envelopefs without running cargo
#   --tree DIR          source of the tree tarball (default /usr/share, without package-lists/)
#   --seq-mib N         sequential file size in MiB (default 1024)
#   --rand-mib N        random-I/O file size in MiB (default 256)
#   --fio-runtime S     seconds per fio run (default 12)
#   --warm              do not drop caches before ls -lR and the read-every-file pass
#   --timeout S         wall-clock limit of each timed command (default 1800)
#   --keep              keep the work directory (backing dirs, logs) after the run
#   --nofile N          raise the open-file limit (ulimit -n) of every daemon to N (default:
#                       inherited; envelopefs needs none: it keeps a bounded cache of
#                       descriptors, but some peers keep one per inode the kernel knows)
#
# Environment: BINDFS_OPTS (default "-o big_writes --multithreaded"), PASSTHROUGH_HP (see
# --passthrough-hp), PASSTHROUGH_HP_OPTS (extra passthrough_hp options, default none), TMPDIR
# (see --dir).
#
# Needs root (drop_caches, /dev/fuse), fio, python3 (fio JSON and the report), fusermount or
# fusermount3. Every mount is made by a child of this script, recorded by mountpoint and PID,
# and unmounted (then its daemon killed by PID) on any exit. Everything that touches a mount
# runs under `timeout`.
#
# Method. All filesystems are mounted at once, each on a fresh backing directory under one work
# directory. Rounds are interleaved at workload granularity: for each round, for each workload,
# each filesystem runs it in turn (the order rotates by one every round), so background noise
# hits every filesystem alike. Random I/O runs with the random-I/O file's backing read back into
# memory first (fio's --invalidate=1 then empties only the mount's own cache): otherwise round 1,
# right after the file is made, would measure a warm backing and later rounds, after the
# sequential read's cache drop, the disk. The report gives the median over rounds per filesystem and
# workload, the ratio of envelopefs to every peer and of each other envelopefs target to every
# non-envelopefs peer (> 1 always means envelopefs is faster: for throughputs ours/peer, for
# times peer/ours), a summary per envelopefs target against the best encrypted peer and bindfs,
# the FUSE transports side by side (classic and io_uring, envelopefs and passthrough_hp), the
# daemon CPU seconds (utime+stime deltas from /proc/PID/stat, all threads) and the daemon peak
# RSS per workload (VmHWM after `echo 5 > /proc/PID/clear_refs`). The header records the
# enable_uring value of the run and how many io_uring rings each daemon held after its mount.
#
# Exit status: 0 when every requested run produced a number, 1 when some failed (they show as
# FAIL in the table), 2 on a setup error.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_FS=(envelopefs envelopefs-uring envelopefs-classic envelopefs-plain gocryptfs securefs cryfs bindfs
    passthrough_hp passthrough_hp-uring native)
# Targets that exist to compare FUSE transports: in the default set only when enable_uring is Y,
# and kept in the table as FAIL (not skipped) when they do not mount or are not on io_uring.
TRANSPORT_FS=(envelopefs-uring envelopefs-classic passthrough_hp-uring)
URING_FS=(envelopefs-uring passthrough_hp-uring)   # must hold io_uring rings once mounted
URING_PARAM=/sys/module/fuse/parameters/enable_uring
ALL_WL=(seqwrite seqread randread1 randread2 randwrite1 randwrite2 untar lsr catall rm)

ROUNDS="" ONLY="" WORKLOADS="" QUICK=0 OUT="" BASE="${TMPDIR:-/var/tmp}" USE_TMPFS=0 THREADS="" FRESH_GIB=""
BIN="" BUILD=1 TREE_SRC="" SEQ_MIB="" RAND_MIB="" FIO_RT="" WARM=0 TMO=1800 KEEP=0 NOFILE=""
TRANSPORT="" URING_SET="" PHP_BIN=${PASSTHROUGH_HP:-} URING_RESTORE=""
PASSTHROUGH_HP_OPTS=${PASSTHROUGH_HP_OPTS-}
# bindfs is the plain-FUSE ceiling, so it gets the options that make it fastest: libfuse 2
# caps writes at 4 KiB without big_writes (88 vs 319 MB/s measured here), and it is
# single-threaded unless told otherwise.
BINDFS_OPTS=${BINDFS_OPTS-"-o big_writes --multithreaded"}

# Messages go to the script's own stderr, saved here: the exit trap can run while a workload's
# stderr is redirected into its log (a signal during a workload), and its notes (what was
# unmounted, enable_uring restored) must still be seen. Daemons do not inherit the saved copy.
exec {STDERR_FD}>&2
die() { echo "bench.sh: $*" >&"$STDERR_FD"; exit 2; }
note() { echo "bench.sh: $*" >&"$STDERR_FD"; }
usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --only) ONLY=${2:?}; shift ;;
        --workloads) WORKLOADS=${2:?}; shift ;;
        --quick) QUICK=1 ;;
        --out) OUT=${2:?}; shift ;;
        --dir) BASE=${2:?}; shift ;;
        --tmpfs) USE_TMPFS=1 ;;
        --fresh-ext4) FRESH_GIB=${2:?}; shift ;;
        --threads) THREADS=${2:?}; shift ;;
        --bin) BIN=${2:?}; BUILD=0; shift ;;
        --no-build) BUILD=0 ;;
        --tree) TREE_SRC=${2:?}; shift ;;
        --seq-mib) SEQ_MIB=${2:?}; shift ;;
        --rand-mib) RAND_MIB=${2:?}; shift ;;
        --fio-runtime) FIO_RT=${2:?}; shift ;;
        --warm) WARM=1 ;;
        --timeout) TMO=${2:?}; shift ;;
        --keep) KEEP=1 ;;
        --nofile) NOFILE=${2:?}; shift ;;
        --transport) TRANSPORT=${2:?}; shift ;;
        --uring) URING_SET=${2:?}; shift ;;
        --passthrough-hp) PHP_BIN=${2:?}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "bench.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done

if ((QUICK)); then
    : "${ROUNDS:=1}" "${SEQ_MIB:=128}" "${RAND_MIB:=32}" "${FIO_RT:=3}" "${TREE_SRC:=/usr/include}"
else
    : "${ROUNDS:=3}" "${SEQ_MIB:=1024}" "${RAND_MIB:=256}" "${FIO_RT:=12}" "${TREE_SRC:=/usr/share}"
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
for v in SEQ_MIB RAND_MIB FIO_RT TMO; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"; done
[[ -z $THREADS || $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer"
[[ -z $NOFILE || $NOFILE =~ ^[1-9][0-9]*$ ]] || die "--nofile must be a positive integer"
[[ -z $TRANSPORT || $TRANSPORT =~ ^(auto|uring|classic)$ ]] || die "--transport takes auto, uring or classic"
[[ -z $URING_SET || $URING_SET =~ ^(on|off)$ ]] || die "--uring takes on or off"
if [[ -n $NOFILE ]] && ! ( ulimit -Hn "$NOFILE" 2>/dev/null || true; ulimit -Sn "$NOFILE" ) 2>/dev/null; then
    die "cannot raise the open-file limit to $NOFILE (hard limit $(ulimit -Hn); raising it needs CAP_SYS_RESOURCE)"
fi

in_list() { local x=$1; shift; local y; for y in "$@"; do [[ $x == "$y" ]] && return 0; done; return 1; }

# FUSE over io_uring: the kernel offers it only while enable_uring is Y. URING_WAS is the value
# found, URING_USE the one the run will have (written after the cleanup trap is in place).
URING_WAS="" URING_USE=""
if [[ -e $URING_PARAM ]]; then
    URING_WAS=$(cat "$URING_PARAM" 2>/dev/null || true)
    case $URING_SET in on) URING_USE=Y ;; off) URING_USE=N ;; *) URING_USE=$URING_WAS ;; esac
    if [[ -n $URING_SET && $URING_USE != "$URING_WAS" && $(id -u) != 0 ]]; then
        die "--uring $URING_SET needs root (writes $URING_PARAM, now $URING_WAS)"
    fi
fi

FSS=() WLS=()
if [[ -n $ONLY ]]; then
    IFS=, read -r -a req <<<"$ONLY"
    for f in "${req[@]}"; do in_list "$f" "${ALL_FS[@]}" || die "unknown filesystem '$f' (known: ${ALL_FS[*]})"; done
    for f in "${ALL_FS[@]}"; do in_list "$f" "${req[@]}" && FSS+=("$f"); done
else
    for f in "${ALL_FS[@]}"; do
        [[ $f == envelopefs-plain ]] && continue
        in_list "$f" "${TRANSPORT_FS[@]}" && [[ $URING_USE != Y ]] && continue
        FSS+=("$f")
    done
fi
if [[ -n $WORKLOADS ]]; then
    IFS=, read -r -a req <<<"$WORKLOADS"
    for w in "${req[@]}"; do in_list "$w" "${ALL_WL[@]}" || die "unknown workload '$w' (known: ${ALL_WL[*]})"; done
    for w in "${ALL_WL[@]}"; do in_list "$w" "${req[@]}" && WLS+=("$w"); done
else
    WLS=("${ALL_WL[@]}")
fi

# ---------------------------------------------------------------------------------------------
# Preconditions
command -v python3 >/dev/null || die "python3 is needed (fio JSON, report)"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"
if in_list randread1 "${WLS[@]}" || in_list randread2 "${WLS[@]}" || in_list randwrite1 "${WLS[@]}" ||
    in_list randwrite2 "${WLS[@]}"; then
    command -v fio >/dev/null || die "fio is needed for the random-I/O workloads (apt-get install -y fio)"
fi
FUSERMOUNT=$(command -v fusermount3 || command -v fusermount || true)
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
IS_ROOT=0; [[ $(id -u) == 0 ]] && IS_ROOT=1
((IS_ROOT)) || note "not root: caches cannot be dropped, so the read workloads are NOT cold (see the report)"
CLK_TCK=$(getconf CLK_TCK)

NOTES=()   # lines for the report's notes section
addnote() { NOTES+=("$*"); note "$*"; }

if [[ ! -e $URING_PARAM ]]; then
    addnote "$URING_PARAM is missing (a kernel without FUSE over io_uring): --uring ignored; the io_uring targets fall back or fail"
fi

# passthrough_hp: --passthrough-hp, $PASSTHROUGH_HP, or the one scripts/build-passthrough-hp.sh builds.
[[ -n $PHP_BIN ]] || PHP_BIN=$ROOT/target/passthrough_hp/passthrough_hp

# Peers: skip those that are not installed.
declare -A PEER_CMD=([gocryptfs]=gocryptfs [securefs]=securefs [cryfs]=cryfs [bindfs]=bindfs)
ACTIVE=() PHP_MISSING=0
for f in "${FSS[@]}"; do
    if [[ -n ${PEER_CMD[$f]:-} ]] && ! command -v "${PEER_CMD[$f]}" >/dev/null; then
        addnote "$f is not installed: skipped (apt-get install -y $f)"
        continue
    fi
    if [[ $f == passthrough_hp* && ! -x $PHP_BIN ]]; then
        ((PHP_MISSING++)) || addnote "no passthrough_hp binary at $PHP_BIN: passthrough_hp targets skipped (build it with scripts/build-passthrough-hp.sh, or pass --passthrough-hp)"
        continue
    fi
    ACTIVE+=("$f")
done
FSS=("${ACTIVE[@]}")
((${#FSS[@]})) || die "no filesystem to run"

# ---------------------------------------------------------------------------------------------
# Work directory and cleanup
if ((USE_TMPFS)); then BASE=/dev/shm; fi
mkdir -p "$BASE"
LOOP_IMG="" LOOP_MNT=""
if [[ -n $FRESH_GIB ]]; then
    [[ $FRESH_GIB =~ ^[1-9][0-9]*$ ]] || die "--fresh-ext4 takes a size in GiB"
    ((! USE_TMPFS)) || die "--fresh-ext4 and --tmpfs exclude each other"
    command -v mkfs.ext4 >/dev/null || die "--fresh-ext4 needs mkfs.ext4 (apt-get install -y e2fsprogs)"
    LOOP_IMG=$(mktemp "$BASE/envfs-bench-ext4.XXXXXX") LOOP_MNT=$(mktemp -d "$BASE/envfs-bench-fs.XXXXXX")
    truncate -s "${FRESH_GIB}G" "$LOOP_IMG" && mkfs.ext4 -q -F "$LOOP_IMG" &&
        mount -o loop "$LOOP_IMG" "$LOOP_MNT" ||
        { rm -f "$LOOP_IMG"; rmdir "$LOOP_MNT"; die "cannot make and mount a fresh ext4 image in $BASE"; }
    BASE=$LOOP_MNT
fi
WORK=$(mktemp -d "$BASE/envfs-bench.XXXXXX")
FSTYPE=$(findmnt -n -o FSTYPE -T "$WORK" 2>/dev/null || stat -f -c %T "$WORK")
if ((USE_TMPFS)); then
    [[ $FSTYPE == tmpfs ]] || { rmdir "$WORK"; die "/dev/shm is not a tmpfs here ($FSTYPE)"; }
elif [[ $FSTYPE == tmpfs || $FSTYPE == ramfs ]]; then
    rmdir "$WORK"; die "$BASE is a $FSTYPE; pass --dir on a disk, or --tmpfs to mean it"
fi
mkdir -p "$WORK/logs" "$WORK/bin"

declare -A PID=() MNT=() BACK=() DEAD=() FAILED_MOUNT=()
MOUNTED=()   # filesystems with a mount made by us, in mount order

unmount_one() { # fs — unmount, then make sure the daemon is gone; never broad kills
    local f=$1 m=${MNT[$1]} p=${PID[$1]:-} i
    if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
        if [[ $f == envelopefs* ]]; then
            kill -TERM "$p" 2>/dev/null || true              # SIGTERM = clean unmount
        else
            timeout 20 ${FUSERMOUNT:-umount} -u "$m" 2>/dev/null || timeout 20 umount "$m" 2>/dev/null ||
                kill -TERM "$p" 2>/dev/null || true
        fi
        for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; sleep 1; fi
        if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    fi
    if timeout 5 mountpoint -q "$m" 2>/dev/null || grep -qF " $m " /proc/self/mounts; then
        timeout 20 umount "$m" 2>/dev/null || timeout 20 umount -l "$m" 2>/dev/null || true
    fi
}

cleanup() {
    local rc=$? f
    trap - EXIT INT TERM
    for f in "${MOUNTED[@]}"; do unmount_one "$f"; done
    local still=0
    for f in "${MOUNTED[@]}"; do grep -qF " ${MNT[$f]} " /proc/self/mounts && { still=1; note "still mounted: ${MNT[$f]}"; }; done
    if [[ -n $URING_RESTORE && $(cat "$URING_PARAM" 2>/dev/null) != "$URING_USE" ]]; then
        # Someone else wrote it during the run: theirs stands.
        note "enable_uring is $(cat "$URING_PARAM" 2>/dev/null) now, not the $URING_USE this run set: changed by someone else during the run, left as it is (it was $URING_RESTORE before)"
    elif [[ -n $URING_RESTORE ]]; then
        if echo "$URING_RESTORE" >"$URING_PARAM" 2>/dev/null; then
            note "enable_uring restored to $(cat "$URING_PARAM" 2>/dev/null)"
        else
            note "could NOT restore $URING_PARAM to $URING_RESTORE (now $(cat "$URING_PARAM" 2>/dev/null))"
        fi
    fi
    if ((KEEP)); then
        note "work directory kept: $WORK"
    elif ((still)); then
        note "not removing $WORK: something is still mounted in it"
    else
        timeout 600 rm -rf --one-file-system "$WORK" || note "could not fully remove $WORK"
    fi
    if [[ -n $LOOP_MNT ]] && ((! still)); then
        timeout 60 umount "$LOOP_MNT" && rmdir "$LOOP_MNT" && rm -f "$LOOP_IMG" ||
            note "could not remove the ext4 image $LOOP_IMG (mounted at $LOOP_MNT)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# enable_uring for the run; the trap above puts the old value back after the unmounts.
if [[ -e $URING_PARAM && -n $URING_SET && $URING_USE != "$URING_WAS" ]]; then
    URING_RESTORE=$URING_WAS
    echo "$URING_USE" >"$URING_PARAM" || die "cannot write $URING_USE to $URING_PARAM"
    [[ $(cat "$URING_PARAM") == "$URING_USE" ]] || die "$URING_PARAM reads $(cat "$URING_PARAM") after writing $URING_USE"
    note "enable_uring set to $URING_USE for the run (was $URING_WAS; restored on exit)"
fi
if [[ -e $URING_PARAM ]]; then
    URING_DESC="enable_uring=$(cat "$URING_PARAM")"
    if [[ -n $URING_RESTORE ]]; then URING_DESC+=" (set by --uring $URING_SET; was $URING_WAS, restored afterwards)"
    elif [[ -n $URING_SET ]]; then URING_DESC+=" (already so before the run: --uring $URING_SET changed nothing)"
    else URING_DESC+=" (as found)"; fi
else
    URING_DESC="$URING_PARAM missing: no FUSE over io_uring in this kernel"
fi

# ---------------------------------------------------------------------------------------------
# Helpers
now() { echo "${EPOCHREALTIME/[.,]/}"; }          # microseconds, no fork
elapsed() { echo $(( $(now) - $1 )); }            # µs since $1

drop_caches() {
    ((IS_ROOT)) || return 0
    timeout 300 sync || true
    echo 3 >/proc/sys/vm/drop_caches
}

# The machine's single-thread speed right now: milliseconds for SHA-256 of 128 MiB of random
# bytes in memory (no file, no other process). On this VM the host's load moves it while the
# machine itself is idle (coreutils sha256sum of 200 MiB in tmpfs, every 3 s for 90 s: 0.62 to
# 1.01 s). The report gives the probe's spread, so a cell's spread can be read against the
# machine's (a steady probe with a spread-out cell points at the filesystem or its context).
cpu_probe() {
    python3 -c 'import hashlib, os, time
b = os.urandom(128 << 20); t = time.perf_counter(); hashlib.sha256(b).digest()
print(round((time.perf_counter() - t) * 1000))' 2>/dev/null || echo ""
}

cpu_ticks() { # pid → utime+stime of the whole process (all threads)
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }
    local -a a
    read -r -a a <<<"$s"
    echo $(( a[11] + a[12] ))
}
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

alive() { # fs → daemon running and mount answering
    local f=$1
    [[ -n ${DEAD[$f]:-} ]] && return 1
    [[ $f == native ]] && return 0
    kill -0 "${PID[$f]}" 2>/dev/null && timeout 10 mountpoint -q "${MNT[$f]}"
}

wait_mounted() { # fs seconds
    local f=$1 deadline=$(( $(now) + $2 * 1000000 ))
    while (( $(now) < deadline )); do
        if ! kill -0 "${PID[$f]}" 2>/dev/null; then return 1; fi
        timeout 5 mountpoint -q "${MNT[$f]}" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# envelopefs binary (copied into the work dir so concurrent rebuilds cannot swap it mid-run)
ENVFS_REV="" RUN_ENVFS=0
for f in "${FSS[@]}"; do [[ $f == envelopefs* ]] && RUN_ENVFS=1; done
if ((RUN_ENVFS)); then
    if [[ -z $BIN ]]; then
        BIN=$ROOT/target/release/envelopefs
        if ((BUILD)); then
            note "building envelopefs (cargo build --release)"
            if ! (cd "$ROOT" && timeout 3600 cargo build --release -q); then
                [[ -x $BIN ]] || die "cargo build --release failed and there is no $BIN"
                addnote "cargo build --release failed (tree being edited?); used the existing binary from $(date -r "$BIN" '+%F %T')"
            fi
        fi
    fi
    [[ -x $BIN ]] || die "no envelopefs binary at $BIN"
    cp "$BIN" "$WORK/bin/envelopefs"
    ENVFS_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml 2>/dev/null) ]]; then ENVFS_REV+="+uncommitted changes"; fi
    ENVFS_REV+=", binary built $(date -r "$BIN" '+%F %T')"
fi

# passthrough_hp binary (copied likewise) and the libfuse it runs on
PHP_DESC=""
if in_list passthrough_hp "${FSS[@]}" || in_list passthrough_hp-uring "${FSS[@]}"; then
    cp "$PHP_BIN" "$WORK/bin/passthrough_hp"
    PHP_DESC=$PHP_BIN
    if [[ -f $(dirname "$PHP_BIN")/VERSION ]]; then PHP_DESC+=": $(head -n 1 "$(dirname "$PHP_BIN")/VERSION")"; fi
    php_lib=$(ldd "$PHP_BIN" 2>/dev/null | awk '/libfuse/ {print $3}' | head -n 1)
    if [[ -n $php_lib ]]; then
        PHP_DESC+="; linked with the shared $php_lib ($(readlink -f "$php_lib"))"
        addnote "passthrough_hp uses the shared $(readlink -f "$php_lib"), which may not be libfuse 3.18 (scripts/build-passthrough-hp.sh links it statically)"
    else
        PHP_DESC+="; libfuse linked statically"
    fi
    PHP_DESC+="; options: --foreground --nopassthrough${PASSTHROUGH_HP_OPTS:+ $PASSTHROUGH_HP_OPTS} (passthrough_hp-uring adds -o io_uring)"
fi

# ---------------------------------------------------------------------------------------------
# Mounts
head -c 32 /dev/urandom >"$WORK/keyfile"
printf 'envelopefs-bench-password\n' >"$WORK/password"

daemon() { # command... — run in the background (caller redirects), with the --nofile limit
    # `<&0`: without job control a background command's stdin would be /dev/null, not the
    # caller's redirection (CryFS reads its password from stdin).
    if [[ -n $NOFILE ]]; then
        ( ulimit -Hn "$NOFILE" 2>/dev/null || true; ulimit -Sn "$NOFILE" && exec "$@" ) <&0 {STDERR_FD}>&- &
    else
        "$@" <&0 {STDERR_FD}>&- &
    fi
}

mount_fs() { # fs → 0 when mounted
    local f=$1 b=$WORK/backing-$1 m=$WORK/mnt-$1 log=$WORK/logs/$1.log
    mkdir -p "$b" "$m"
    BACK[$f]=$b MNT[$f]=$m
    case $f in
        native)
            MNT[$f]=$b; return 0 ;;
        envelopefs*)
            local init_extra=(); [[ $f == envelopefs-plain ]] && init_extra=(--plaintext-names)
            timeout 120 "$WORK/bin/envelopefs" init "$b" --keyfile "$WORK/keyfile" "${init_extra[@]}" >"$log" 2>&1 || return 1
            local extra=(); [[ -n $THREADS ]] && extra=(--threads "$THREADS")
            case $f in
                envelopefs-uring) extra+=(--transport uring) ;;
                envelopefs-classic) extra+=(--transport classic) ;;
                *) [[ -n $TRANSPORT ]] && extra+=(--transport "$TRANSPORT") ;;
            esac
            daemon "$WORK/bin/envelopefs" mount "$b" "$m" --keyfile "$WORK/keyfile" "${extra[@]}" </dev/null >>"$log" 2>&1
            ;;
        gocryptfs)
            timeout 120 gocryptfs -init -q -passfile "$WORK/password" -scryptn 10 "$b" >"$log" 2>&1 || return 1
            daemon gocryptfs -fg -q -passfile "$WORK/password" "$b" "$m" </dev/null >>"$log" 2>&1
            ;;
        securefs)
            # Format 4 = lite (the default); PBKDF2 with few rounds only to make setup fast.
            timeout 120 securefs create --format 4 --keyfile "$WORK/keyfile" \
                --pbkdf pkcs5-pbkdf2-hmac-sha256 --rounds 1000 "$b" >"$log" 2>&1 || return 1
            daemon securefs mount --keyfile "$WORK/keyfile" "$b" "$m" </dev/null >>"$log" 2>&1
            ;;
        cryfs)
            # Noninteractive frontend reads the password from stdin; default cipher and block size.
            # XDG_DATA_HOME keeps CryFS's local state (known filesystems) inside the work dir.
            CRYFS_FRONTEND=noninteractive CRYFS_NO_UPDATE_CHECK=true XDG_DATA_HOME=$WORK/cryfs-state \
                daemon cryfs -f "$b" "$m" <"$WORK/password" >"$log" 2>&1
            ;;
        bindfs)
            # shellcheck disable=SC2086 # BINDFS_OPTS is a list of options
            daemon bindfs -f $BINDFS_OPTS "$b" "$m" </dev/null >"$log" 2>&1
            ;;
        passthrough_hp | passthrough_hp-uring)
            # --nopassthrough: every read and write goes through the daemon (no kernel backing-file
            # passthrough), as it does in every other FUSE filesystem here. A session asked for
            # io_uring that cannot have it falls back to /dev/fuse silently; the ring count after
            # the mount tells (see below).
            local extra=(); [[ $f == passthrough_hp-uring ]] && extra=(-o io_uring)
            # shellcheck disable=SC2086 # PASSTHROUGH_HP_OPTS is a list of options
            daemon "$WORK/bin/passthrough_hp" --foreground --nopassthrough $PASSTHROUGH_HP_OPTS "${extra[@]}" \
                "$b" "$m" </dev/null >"$log" 2>&1
            ;;
    esac
    PID[$f]=$!
    MOUNTED+=("$f")
    # CryFS runs scrypt (about 1 GB, seconds to a minute on a busy machine) before mounting.
    wait_mounted "$f" 300 || return 1
    timeout 30 touch "$m/.bench-probe" && timeout 30 rm -f "$m/.bench-probe"
}

uring_rings() { # pid → how many io_uring instances the process holds open
    local l n=0
    for l in /proc/"$1"/fd/*; do [[ $(readlink "$l" 2>/dev/null) == 'anon_inode:[io_uring]' ]] && n=$((n + 1)); done
    echo "$n"
}

declare -A RINGS=()
for f in "${FSS[@]}"; do
    note "mounting $f"
    if ! mount_fs "$f"; then
        if in_list "$f" "${TRANSPORT_FS[@]}"; then
            addnote "$f failed to mount; its cells are FAIL (log: $(tail -n 3 "$WORK/logs/$f.log" 2>/dev/null | tr '\n' ' '))"
            FAILED_MOUNT[$f]=1
        else
            addnote "$f failed to mount; skipped (log: $(tail -n 3 "$WORK/logs/$f.log" 2>/dev/null | tr '\n' ' '))"
        fi
        DEAD[$f]=1
        [[ -n ${PID[$f]:-} ]] && unmount_one "$f"
        continue
    fi
    # After the mount (FUSE_INIT done, one request answered) a daemon on FUSE over io_uring
    # holds its rings; one that fell back to reading /dev/fuse holds none.
    [[ -n ${PID[$f]:-} ]] && RINGS[$f]=$(uring_rings "${PID[$f]}")
    if in_list "$f" "${URING_FS[@]}" && [[ ${RINGS[$f]:-0} == 0 ]]; then
        addnote "$f mounted but its daemon holds no io_uring ring (not on FUSE over io_uring: ${URING_DESC}); its cells are FAIL"
        FAILED_MOUNT[$f]=1 DEAD[$f]=1
        unmount_one "$f"
    fi
done
LIVE=() n_live=0
for f in "${FSS[@]}"; do
    [[ -z ${DEAD[$f]:-} ]] && n_live=$((n_live + 1))
    [[ -z ${DEAD[$f]:-} || -n ${FAILED_MOUNT[$f]:-} ]] && LIVE+=("$f")
done
FSS=("${LIVE[@]}")
((n_live)) || die "nothing mounted"
RINGS_DESC=""
for f in "${FSS[@]}"; do [[ -n ${RINGS[$f]:-} ]] && RINGS_DESC+="${RINGS_DESC:+; }$f ${RINGS[$f]}"; done

# ---------------------------------------------------------------------------------------------
# Tree tarball (built once per run from a real tree on this machine)
TREE_TAR=$WORK/tree.tar TREE_DESC=""
needs_tree=0
for w in untar lsr catall rm; do in_list "$w" "${WLS[@]}" && needs_tree=1; done
if ((needs_tree)); then
    [[ -d $TREE_SRC ]] || die "tree source $TREE_SRC is not a directory"
    note "building the tree tarball from $TREE_SRC"
    excl=()
    [[ $TREE_SRC == /usr/share ]] && excl=(--exclude=./package-lists)
    timeout 1200 tar -C "$TREE_SRC" "${excl[@]}" --one-file-system -cf "$TREE_TAR" . 2>"$WORK/logs/tar-create.log" ||
        [[ -s $TREE_TAR ]] || die "could not build the tree tarball (see $WORK/logs/tar-create.log)"
    read -r T_FILES T_DIRS T_LINKS T_BYTES < <(tar -tvf "$TREE_TAR" | awk '
        substr($1,1,1)=="-" {f++; b+=$3} substr($1,1,1)=="d" {d++} substr($1,1,1)=="l" {l++}
        END {printf "%d %d %d %d\n", f, d, l, b}')
    TREE_DESC="$TREE_SRC${excl:+ (without package-lists/)}: $T_FILES files, $T_DIRS directories, $T_LINKS symlinks, $(( T_BYTES / 1048576 )) MiB of file data (tarball $(( $(stat -c %s "$TREE_TAR") / 1048576 )) MiB)"
    note "tree: $TREE_DESC"
fi

# ---------------------------------------------------------------------------------------------
# Workloads. Each prints "VALUE" on success; untimed preparation is done before the clock starts.
RES=$WORK/results.tsv
printf 'round\tfs\tworkload\tvalue\tunit\tcpu_s\thwm_mib\n' >"$RES"

declare -A UNIT=([seqwrite]=MB/s [seqread]=MB/s [randread1]=IOPS [randread2]=IOPS [randwrite1]=IOPS
    [randwrite2]=IOPS [untar]=s [lsr]=s [catall]=s [rm]=s)

prep_file() { # path MiB source — (re)create a file of that size, untimed
    local p=$1 mib=$2 src=$3
    if [[ -f $p ]] && [[ $(timeout 60 stat -c %s "$p") == $(( mib * 1048576 )) ]]; then return 0; fi
    timeout "$TMO" rm -f "$p" || return 1
    timeout "$TMO" dd if="$src" of="$p" bs=1M count="$mib" conv=fsync status=none
}

warm_backing() { # fs [MiB] — bring everything below the FUSE layer back into memory: the
    # metadata, and the files below MiB (default 20; whatever their backing names)
    local b=${BACK[$1]} max=${2:-20}
    timeout "$TMO" ls -lR "$b" >/dev/null 2>&1 || true
    timeout "$TMO" find "$b" -type f -size -"$max"M -exec cat {} + >/dev/null 2>&1 || true
}

fio_iops() { # fs rw jobs → IOPS
    local f=$1 rw=$2 jobs=$3 m=${MNT[$1]} json=$WORK/logs/fio-$1-$2-$3.json
    local extra=() t0 t1; [[ $rw == randwrite ]] && extra=(--end_fsync=1)
    t0=$(now)
    timeout $(( FIO_RT + TMO )) fio --name="$rw" --filename="$m/rand.dat" --rw="$rw" --bs=4k \
        --size="${RAND_MIB}M" --numjobs="$jobs" --time_based --runtime="$FIO_RT" --direct=0 \
        --ioengine=psync --invalidate=1 --group_reporting "${extra[@]}" \
        --output-format=json --output="$json" >/dev/null 2>>"$WORK/logs/fio.err" || return 1
    t1=$(now)
    # Reads: fio's own IOPS. Writes: the writes fio made divided by the wall time of the whole
    # run including the final fsync, so a filesystem that buffers writes in the page cache
    # (the native directory; envelopefs with the kernel's writeback cache) pays for flushing
    # them inside the measurement.
    python3 - "$json" "${rw#rand}" "$t0" "$t1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]
if sys.argv[2] == "write":
    print(round(d["total_ios"] / ((int(sys.argv[4]) - int(sys.argv[3])) / 1e6)))
else:
    print(round(d["iops"]))
EOF
}

tree_ready() { # fs — make sure an untarred tree exists (untimed), for lsr/catall/rm without untar
    local m=${MNT[$1]}
    [[ -f $m/.tree-complete ]] && return 0
    timeout "$TMO" rm -rf "$m/tree" && mkdir -p "$m/tree" &&
        timeout "$TMO" tar -xf "$TREE_TAR" -C "$m/tree" && touch "$m/.tree-complete"
}

# Globals set by run_one for the record: VALUE CPU_S HWM_MIB
run_one() { # fs workload
    local f=$1 w=$2 m=${MNT[$1]} p=${PID[$1]:-} t0 c0=0 us
    VALUE="" CPU_S="" HWM_MIB=""
    # --- untimed preparation
    case $w in
        seqwrite) timeout "$TMO" rm -f "$m/seq.dat" || return 1 ;;
        seqread) prep_file "$m/seq.dat" "$SEQ_MIB" /dev/zero || return 1; drop_caches ;;
        rand*) prep_file "$m/rand.dat" "$RAND_MIB" /dev/urandom || return 1; warm_backing "$f" $(( RAND_MIB + RAND_MIB / 8 + 2 )) ;;
        untar)
            # The sequential file is not needed any more this round; keep the backing small.
            timeout "$TMO" rm -f "$m/seq.dat" "$m/.tree-complete" && timeout "$TMO" rm -rf "$m/tree" || return 1
            mkdir -p "$m/tree" || return 1
            cat "$TREE_TAR" >/dev/null ;;                         # tarball itself in the page cache
        lsr|catall)
            tree_ready "$f" || return 1
            if ((! WARM)); then drop_caches; warm_backing "$f"; fi ;;
        rm) tree_ready "$f" || return 1 ;;
    esac 2>>"$WORK/logs/$f-$w.err"
    if [[ -n $p ]]; then c0=$(cpu_ticks "$p"); reset_hwm "$p"; fi
    t0=$(now)
    # --- timed
    case $w in
        seqwrite)
            timeout "$TMO" dd if=/dev/zero of="$m/seq.dat" bs=1M count="$SEQ_MIB" conv=fsync status=none || return 1
            us=$(elapsed "$t0"); VALUE=$(awk -v b=$(( SEQ_MIB * 1048576 )) -v us="$us" 'BEGIN {printf "%.1f", b / us}') ;;
        seqread)
            timeout "$TMO" dd if="$m/seq.dat" of=/dev/null bs=1M status=none || return 1
            us=$(elapsed "$t0"); VALUE=$(awk -v b=$(( SEQ_MIB * 1048576 )) -v us="$us" 'BEGIN {printf "%.1f", b / us}') ;;
        randread1) VALUE=$(fio_iops "$f" randread 1) || return 1 ;;
        randread2) VALUE=$(fio_iops "$f" randread 2) || return 1 ;;
        randwrite1) VALUE=$(fio_iops "$f" randwrite 1) || return 1 ;;
        randwrite2) VALUE=$(fio_iops "$f" randwrite 2) || return 1 ;;
        untar)
            timeout "$TMO" tar -xf "$TREE_TAR" -C "$m/tree" || return 1
            us=$(elapsed "$t0"); touch "$m/.tree-complete" ;;
        lsr)
            timeout "$TMO" ls -lR "$m/tree" >/dev/null || return 1
            us=$(elapsed "$t0") ;;
        catall)
            timeout "$TMO" find "$m/tree" -type f -exec cat {} + >/dev/null || return 1
            us=$(elapsed "$t0") ;;
        rm)
            timeout "$TMO" rm -f "$m/.tree-complete" && timeout "$TMO" rm -rf "$m/tree" || return 1
            us=$(elapsed "$t0")
            [[ -e $m/tree ]] && return 1 ;;
    esac 2>>"$WORK/logs/$f-$w.err"
    [[ ${UNIT[$w]} == s ]] && VALUE=$(awk -v us="$us" 'BEGIN {printf "%.2f", us / 1e6}')
    if [[ -n $p ]]; then
        CPU_S=$(awk -v t=$(( $(cpu_ticks "$p") - c0 )) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
        HWM_MIB=$(awk -v k="$(hwm_kib "$p")" 'BEGIN {printf "%.1f", k / 1024}')
    fi
    return 0
}

# ---------------------------------------------------------------------------------------------
# Run
START_DATE=$(date '+%F %T %Z')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
FAILS=0 LOADS=()
note "work dir $WORK ($FSTYPE); filesystems: ${FSS[*]}; workloads: ${WLS[*]}; rounds: $ROUNDS"
n=${#FSS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    LOADS+=(" round $r $(cut -d' ' -f1-3 /proc/loadavg)")
    for w in "${WLS[@]}"; do
        ms=$(cpu_probe)
        if [[ -n $ms ]]; then printf '%s\t%s\t%s\n' "$r" "$w" "$ms" >>"$WORK/probe.tsv"; note "round $r/$ROUNDS  $w  cpu probe: $ms ms"; fi
        for ((i = 0; i < n; i++)); do
            f=${FSS[$(( (i + r - 1) % n ))]}
            if ! alive "$f"; then
                [[ -z ${DEAD[$f]:-} ]] && { DEAD[$f]=1; addnote "$f: the mount stopped answering in round $r before $w; its later cells are FAIL"; }
                printf '%s\t%s\t%s\tFAIL\t%s\t\t\n' "$r" "$f" "$w" "${UNIT[$w]}" >>"$RES"; FAILS=$((FAILS + 1))
                continue
            fi
            if run_one "$f" "$w"; then
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$f" "$w" "$VALUE" "${UNIT[$w]}" "$CPU_S" "$HWM_MIB" >>"$RES"
                note "round $r/$ROUNDS  $w  $f: $VALUE ${UNIT[$w]}${CPU_S:+  (daemon cpu ${CPU_S}s, peak rss ${HWM_MIB} MiB)}"
            else
                printf '%s\t%s\t%s\tFAIL\t%s\t\t\n' "$r" "$f" "$w" "${UNIT[$w]}" >>"$RES"; FAILS=$((FAILS + 1))
                addnote "$f: $w failed in round $r ($(grep -m1 . "$WORK/logs/$f-$w.err" 2>/dev/null | cut -c1-160); $(wc -l <"$WORK/logs/$f-$w.err" 2>/dev/null || echo 0) error lines)"
            fi
        done
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report
ver() { "$@" 2>&1 | head -n 1 | tr -d '\r' || true; }
{
    echo "date=$START_DATE"
    echo "host=$(hostname) · $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)) · $(awk '/^MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo) · kernel $(uname -r)"
    echo "workdir=$WORK on $(df --output=source "$WORK" | tail -n 1) ($FSTYPE${LOOP_IMG:+: a fresh journaled ext4 of $FRESH_GIB GiB made for this run, image on $(findmnt -n -o SOURCE -T "$LOOP_IMG")})"
    echo "envelopefs=${ENVFS_REV:-not run}${THREADS:+, --threads $THREADS}${TRANSPORT:+, --transport $TRANSPORT (envelopefs, envelopefs-plain)}"
    echo "fuse=$URING_DESC"
    [[ -n $RINGS_DESC ]] && echo "rings=io_uring rings held by each daemon after its mount: $RINGS_DESC"
    in_list gocryptfs "${FSS[@]}" && echo "gocryptfs=$(ver gocryptfs -version)"
    in_list securefs "${FSS[@]}" && echo "securefs=$(dpkg-query -W -f '${Version}' securefs 2>/dev/null || echo '?') (format 4 = lite)"
    in_list cryfs "${FSS[@]}" && echo "cryfs=$(ver cryfs --version) (default cipher xchacha20-poly1305, 16 KiB blocks)"
    in_list bindfs "${FSS[@]}" && echo "bindfs=$(ver bindfs --version), options: ${BINDFS_OPTS:-none}"
    [[ -n $PHP_DESC ]] && echo "passthrough_hp=$PHP_DESC"
    echo "fio=$(ver fio --version)"
    echo "limits=daemon open-file limit (ulimit -n) ${NOFILE:-$(ulimit -n) (inherited)}"
    echo "sizes=sequential ${SEQ_MIB} MiB; random-I/O file ${RAND_MIB} MiB; fio ${FIO_RT} s per run"
    echo "tree=${TREE_DESC:-not used}"
    echo "rounds=$ROUNDS$( ((QUICK)) && echo ' (quick mode)')"
    echo "caches=$( ((IS_ROOT)) || echo 'NOT dropped (not root); ')$( ((WARM)) && echo 'warm tree reads (--warm)' || echo 'drop_caches + backing re-warmed before ls -lR and read-all'); backing of the random-I/O file read back before each fio run"
    echo "load=1/5/15-min load average at start $LOAD_START; $(IFS=';'; echo "${LOADS[*]}"); end $LOAD_END"
    if [[ -s $WORK/probe.tsv ]]; then
        echo "cpu_probe=$(cut -f3 "$WORK/probe.tsv" | sort -n | awk '{a[NR] = $1} END {printf "single-thread SHA-256 of 128 MiB in memory, timed before each workload of each round (%d times): median %d ms, fastest %d, slowest %d (%.2fx)", NR, a[int((NR + 1) / 2)], a[1], a[NR], a[NR] / a[1]}')"
    fi
    for x in "${NOTES[@]}"; do echo "note=$x"; done
} >"$WORK/meta.txt"

REPORT=$WORK/report.md
python3 - "$RES" "$WORK/meta.txt" "${FSS[*]}" "${WLS[*]}" >"$REPORT" <<'EOF'
import math, statistics, sys
from collections import defaultdict

res, meta, fss, wls = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
NAMES = {
    "seqwrite": "sequential write + fsync", "seqread": "sequential read, caches dropped",
    "randread1": "fio 4 KiB random read, 1 job", "randread2": "fio 4 KiB random read, 2 jobs",
    "randwrite1": "fio 4 KiB random write, 1 job", "randwrite2": "fio 4 KiB random write, 2 jobs",
    "untar": "untar the tree", "lsr": "ls -lR of the tree", "catall": "read every file of the tree",
    "rm": "rm -rf of the tree",
}
ENCRYPTED = ["gocryptfs", "securefs", "cryfs"]
vals, cpu, hwm, units, raw = defaultdict(list), defaultdict(list), defaultdict(list), {}, defaultdict(list)
with open(res) as fh:
    next(fh)
    for line in fh:
        r, fs, w, v, unit, c, h = (line.rstrip("\n").split("\t") + [""] * 7)[:7]
        units[w] = unit
        raw[(fs, w)].append(v)
        if v == "FAIL":
            continue
        vals[(fs, w)].append(float(v))
        if c:
            cpu[(fs, w)].append(float(c))
        if h:
            hwm[(fs, w)].append(float(h))

def med(k):
    return statistics.median(vals[k]) if vals.get(k) else None

def fmt(x, unit):
    if x is None:
        return "FAIL"
    if unit == "s":
        return f"{x:.2f} s"
    if unit == "IOPS":
        return f"{x/1000:.1f}k" if x >= 1000 else f"{x:.0f}"
    return f"{x:.0f}"

def ratio(ours, peer, unit):
    if ours is None or peer is None or ours == 0 or peer == 0:
        return None
    return peer / ours if unit == "s" else ours / peer

def better(a, b, unit):  # is a better than b
    return a < b if unit == "s" else a > b

meta_lines = [l.rstrip("\n").split("=", 1) for l in open(meta) if "=" in l]
m = {k: v for k, v in meta_lines if k != "note"}
notes = [v for k, v in meta_lines if k == "note"]
out = []
out.append(f"## Benchmark run of {m['date']}\n")
for k in ["host", "workdir", "envelopefs", "fuse", "rings", "gocryptfs", "securefs", "cryfs", "bindfs", "passthrough_hp", "fio", "limits", "sizes", "tree", "rounds", "caches", "load", "cpu_probe"]:
    if k in m:
        out.append(f"- **{k}**: {m[k]}")
for n in notes:
    out.append(f"- **note**: {n}")
out.append("")
out.append(f"### Medians over {m['rounds'].split()[0]} interleaved rounds (higher is better for MB/s and IOPS, lower for s)\n")
out.append("Random-write IOPS are the writes made divided by the wall time of the fio run including its final fsync; sequential write includes the fsync too.\n")
out.append("| workload | unit | " + " | ".join(fss) + " |")
out.append("|---|---|" + "---|" * len(fss))
for w in wls:
    u = units.get(w, "")
    out.append(f"| {NAMES[w]} | {u} | " + " | ".join(fmt(med((f, w)), u) for f in fss) + " |")
out.append("")
def best_encrypted(w, u):
    best = None
    for p in fss:
        v = med((p, w)) if p in ENCRYPTED else None
        if v is not None and (best is None or better(v, best[1], u)):
            best = (p, v)
    return best

def relative(us, peers):  # one table: target `us` against each peer and the best encrypted one
    enc = [f for f in peers if f in ENCRYPTED]
    out.append(f"### {us} relative to each peer (> 1 means {us} is faster)\n")
    out.append(f"Throughputs: {us} / peer. Times: peer time / {us} time.\n")
    hdr = "| workload | " + " | ".join(f"vs {p}" for p in peers)
    if enc:
        hdr += " | best encrypted peer | vs best (target ≥ 1.30)"
    out.append(hdr + " |")
    out.append("|---|" + "---|" * (len(peers) + (2 if enc else 0)))
    for w in wls:
        u = units.get(w, "")
        ours = med((us, w))
        cells = []
        for p in peers:
            r = ratio(ours, med((p, w)), u)
            cells.append("–" if r is None else f"{r:.2f}")
        if enc:
            best = best_encrypted(w, u)
            if best is None:
                cells += ["–", "–"]
            else:
                r = ratio(ours, best[1], u)
                cells += [f"{best[0]} ({fmt(best[1], u)})", "–" if r is None else f"**{r:.2f}**" if r < 1.3 else f"{r:.2f}"]
        out.append(f"| {NAMES[w]} | " + " | ".join(cells) + " |")
    out.append("")

ours_all = [f for f in fss if f.startswith("envelopefs")]
others = [f for f in fss if not f.startswith("envelopefs")]
# envelopefs (the daemon's default transport) against every other target, as it always was;
# each other envelopefs target against every non-envelopefs peer.
if "envelopefs" in fss and len(fss) > 1:
    relative("envelopefs", [f for f in fss if f != "envelopefs"])
for us in ours_all:  # a target with no number at all (it did not mount) has only its FAIL column
    if us != "envelopefs" and others and any(vals.get((us, w)) for w in wls):
        relative(us, others)

def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None

has_enc = any(f in ENCRYPTED for f in fss)
if ours_all and (has_enc or "bindfs" in fss):
    out.append("### Summary: each envelopefs target against the best encrypted peer and bindfs (> 1 means envelopefs is faster)\n")
    parts = (["best encrypted peer of each workload"] if has_enc else []) + (["bindfs"] if "bindfs" in fss else [])
    out.append("Each cell: " + " / ".join(f"vs {p}" for p in parts) + "; geometric mean over the workloads in the last column.\n")
    out.append("| target | " + " | ".join(wls) + " | geo. mean |")
    out.append("|---|" + "---|" * (len(wls) + 1))
    for us in ours_all:
        cells, vb, vd = [], [], []
        for w in wls:
            u = units.get(w, "")
            ours = med((us, w))
            if ours is None:
                cells.append("FAIL")
                continue
            c = []
            if has_enc:
                best = best_encrypted(w, u)
                r = ratio(ours, best[1], u) if best else None
                vb.append(r)
                c.append("–" if r is None else f"{r:.2f}")
            if "bindfs" in fss:
                r = ratio(ours, med(("bindfs", w)), u)
                vd.append(r)
                c.append("–" if r is None else f"{r:.2f}")
            cells.append(" / ".join(c))
        g = []
        if has_enc:
            x = geomean(vb); g.append("–" if x is None else f"{x:.2f}")
        if "bindfs" in fss:
            x = geomean(vd); g.append("–" if x is None else f"{x:.2f}")
        out.append(f"| {us} | " + " | ".join(cells) + " | " + " / ".join(g) + " |")
    out.append("")

# The FUSE transports side by side: envelopefs and libfuse's passthrough_hp, each on the classic
# /dev/fuse transport and on io_uring; passthrough_hp-uring is the plain-FUSE ceiling.
tp = [f for f in ["envelopefs-classic", "envelopefs-uring", "passthrough_hp", "passthrough_hp-uring"] if f in fss]
if len(tp) >= 2:
    pairs = [(a, b, t) for a, b, t in [
        ("envelopefs-uring", "envelopefs-classic", "envelopefs uring / classic"),
        ("passthrough_hp-uring", "passthrough_hp", "passthrough_hp uring / classic"),
        ("envelopefs-classic", "passthrough_hp", "envelopefs-classic / passthrough_hp"),
        ("envelopefs-uring", "passthrough_hp-uring", "envelopefs-uring / passthrough_hp-uring (share of the ceiling)"),
    ] if a in fss and b in fss]
    out.append("### FUSE transports side by side (medians; ratios > 1 mean the first is faster)\n")
    out.append("| workload | unit | " + " | ".join(tp + [t for _, _, t in pairs]) + " |")
    out.append("|---|---|" + "---|" * (len(tp) + len(pairs)))
    for w in wls:
        u = units.get(w, "")
        cells = [fmt(med((f, w)), u) for f in tp]
        for a, b, _ in pairs:
            r = ratio(med((a, w)), med((b, w)), u)
            cells.append("–" if r is None else f"{r:.2f}")
        out.append(f"| {NAMES[w]} | {u} | " + " | ".join(cells) + " |")
    out.append("")
daemons = [f for f in fss if f != "native"]
if daemons and any(cpu.get((f, w)) for f in daemons for w in wls):
    out.append("### Daemon CPU seconds (median; utime+stime of all threads) and peak RSS (max VmHWM, MiB) per workload\n")
    out.append("| workload | " + " | ".join(f"{f} CPU s | {f} RSS MiB" for f in daemons) + " |")
    out.append("|---|" + "---|---|" * len(daemons))
    for w in wls:
        cells = []
        for f in daemons:
            c, h = cpu.get((f, w)), hwm.get((f, w))
            cells.append(f"{statistics.median(c):.2f}" if c else "–")
            cells.append(f"{max(h):.0f}" if h else "–")
        out.append(f"| {NAMES[w]} | " + " | ".join(cells) + " |")
    out.append("")
out.append("### Every round (in run order; spread = (max − min) / median)\n")
out.append("| workload | " + " | ".join(fss) + " |")
out.append("|---|" + "---|" * len(fss))
for w in wls:
    cells = []
    for f in fss:
        xs = raw.get((f, w), [])
        nums = vals.get((f, w), [])
        s = " / ".join(xs) if xs else "–"
        if len(nums) > 1 and statistics.median(nums):
            s += f" ({(max(nums) - min(nums)) / statistics.median(nums) * 100:.0f} %)"
        cells.append(s)
    out.append(f"| {NAMES[w]} | " + " | ".join(cells) + " |")
print("\n".join(out))
EOF

cat "$REPORT"
if [[ -n $OUT ]]; then
    cp "$REPORT" "$OUT"
    cp "$RES" "$OUT.tsv"
    [[ -f $WORK/probe.tsv ]] && cp "$WORK/probe.tsv" "$OUT.probe.tsv"
    note "report written to $OUT (raw values: $OUT.tsv)"
fi
((FAILS == 0)) || exit 1
exit 0
