#!/usr/bin/env bash
# From nothing to a mounted encrypted directory: builds envelopefs, creates a volume in
# ./envelopefs-demo/backing (passphrase generated into ./envelopefs-demo/passphrase, mode 0600),
# and mounts it in the background at ./envelopefs-demo/plain.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
demo="${1:-$PWD/envelopefs-demo}"
"$repo/scripts/install-deps.sh"
cargo build --release --manifest-path "$repo/Cargo.toml" -q
bin="$repo/target/release/envelopefs"
mkdir -p "$demo/plain"
if [ ! -f "$demo/backing/envelopefs.json" ]; then
  (umask 077; head -c 24 /dev/urandom | base64 > "$demo/passphrase")
  "$bin" init "$demo/backing" --passfile "$demo/passphrase"
fi
"$bin" mount --background "$demo/backing" "$demo/plain" --passfile "$demo/passphrase"
cat <<MSG

Your encrypted directory is mounted at $demo/plain
  echo hello > $demo/plain/hello.txt     # write through the mount
  xxd $demo/backing/data/hello.txt | head # only ciphertext lands in the backing dir
  $bin info $demo/backing                 # volume facts
  $bin unmount $demo/plain                # stop (remount: $bin mount $demo/backing $demo/plain --passfile $demo/passphrase)
The passphrase is in $demo/passphrase: keep it, or the data is gone for good.
MSG
