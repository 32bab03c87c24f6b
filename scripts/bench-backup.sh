#!/usr/bin/env bash
# Measures the offline backup tools against reading the tree through the mount, on one volume:
#   N files (default 5000) of SIZE bytes (default 65536) are written through the mount, then,
#   with the page cache dropped before each run (as root; otherwise warm):
#     mount-read: `tar -cf - . | wc -c` through the mount (reads every byte via FUSE; GNU tar
#                 skips reading files when writing to /dev/null itself)
#     fsck:       `envelopefs fsck BACKING` (every header copy, block, xattr, name)
#     export:     `envelopefs export BACKING DEST` (decrypt and write the whole tree)
# Usage: scripts/bench-backup.sh [N] [SIZE]
set -euo pipefail
n="${1:-5000}"
size="${2:-65536}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -q --manifest-path "$repo/Cargo.toml"
bin="$repo/target/release/envelopefs"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/envelopefs-backup.XXXXXX")"
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then "$bin" unmount "$work/mnt" || umount -l "$work/mnt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
drop() { if [ "$(id -u)" -eq 0 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }
secs() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
head -c 32 /dev/urandom > "$work/key"
mkdir -p "$work/mnt"
"$bin" init "$work/backing" --keyfile "$work/key" >/dev/null
"$bin" mount --background "$work/backing" "$work/mnt" --keyfile "$work/key" --log-file "$work/log" >/dev/null
python3 - "$work/mnt/src" "$n" "$size" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    sub = os.path.join(d, f"d{i // 500:03d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(size))
PY
"$bin" unmount "$work/mnt"
"$bin" mount --background "$work/backing" "$work/mnt" --keyfile "$work/key" --log-file "$work/log" >/dev/null
drop
t_mount=$(secs sh -c "tar -C $work/mnt -cf - . | wc -c")
"$bin" unmount "$work/mnt"
drop
t_fsck=$(secs "$bin" fsck "$work/backing" --keyfile "$work/key" --json)
drop
t_export=$(secs "$bin" export "$work/backing" "$work/out" --keyfile "$work/key" --json)
mb=$(echo "$n * $size / 1048576" | bc -l)
printf '%d files x %d bytes (%.0f MiB), caches %s\n' "$n" "$size" "$mb" "$([ "$(id -u)" -eq 0 ] && echo dropped || echo warm)"
for row in "mount-read:$t_mount" "fsck:$t_fsck" "export:$t_export"; do
  name=${row%%:*}; t=${row#*:}
  printf '%-11s %7.2f s  %7.1f MiB/s  %5.2fx mount-read\n' "$name" "$t" "$(echo "$mb / $t" | bc -l)" "$(echo "$t_mount / $t" | bc -l)"
done
