#!/usr/bin/env bash
# Measures `envelopefs rewrap` against copying the same files, on one mounted volume:
#   N files (default 10000, SIZE bytes each, default 16384) are written through the mount,
#   then timed: `cp -a` of the tree through the mount (what re-encrypting everything would
#   cost at the least) versus `key rotate` + `rewrap` of the live volume (headers only).
# Usage: scripts/bench-rewrap.sh [N] [SIZE]
set -euo pipefail
n="${1:-10000}"
size="${2:-16384}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -q --manifest-path "$repo/Cargo.toml"
bin="$repo/target/release/envelopefs"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/envelopefs-rewrap.XXXXXX")"
pid=""
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then "$bin" unmount "$work/mnt" || umount -l "$work/mnt" || true; fi
  if [ -n "$pid" ]; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
head -c 32 /dev/urandom > "$work/key"
mkdir -p "$work/mnt"
"$bin" init "$work/backing" --keyfile "$work/key" >/dev/null
"$bin" mount "$work/backing" "$work/mnt" --keyfile "$work/key" --log-file "$work/log" &
pid=$!
for _ in $(seq 200); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { echo "mount failed"; cat "$work/log"; exit 1; }
mkdir "$work/mnt/src"
python3 - "$work/mnt/src" "$n" "$size" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blob = os.urandom(size)
for i in range(n):
    sub = os.path.join(d, f"d{i // 1000:03d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
        f.write(blob)
PY
sync
now() { date +%s.%N; }
t0=$(now); timeout 1800 cp -a "$work/mnt/src" "$work/mnt/copy"; sync; t1=$(now)
"$bin" key rotate "$work/backing" alias/default --keyfile "$work/key" >/dev/null
t2=$(now); timeout 1800 "$bin" rewrap "$work/backing" --keyfile "$work/key" --json > "$work/rewrap.json"; t3=$(now)
copy=$(python3 -c "print($t1 - $t0)"); rewrap=$(python3 -c "print($t3 - $t2)")
files=$(python3 -c "import json,sys; print(json.load(open('$work/rewrap.json'))['rewrapped'])")
printf '| files | size | cp -a through the mount (s) | rewrap of the live volume (s) | rewrap / copy |\n'
printf '|---|---|---|---|---|\n'
printf '| %s | %s B | %.2f | %.2f | %.3f |\n' "$n" "$size" "$copy" "$rewrap" "$(python3 -c "print($rewrap / $copy)")"
echo "headers re-wrapped: $files (the copy doubled the file count, so this is 2 x $n)"
