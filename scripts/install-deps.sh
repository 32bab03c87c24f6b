#!/usr/bin/env bash
# Installs what envelopefs and its tests need on Debian/Ubuntu: fuse3 (fusermount3, /dev/fuse
# helpers), attr (getfattr/setfattr), git, tar, python3, xxd, openssl. As root it installs them; otherwise it
# prints the exact apt-get command and fails if something is missing.
set -euo pipefail
need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v setfattr >/dev/null 2>&1 || need+=(attr)
command -v git >/dev/null 2>&1 || need+=(git)
command -v tar >/dev/null 2>&1 || need+=(tar)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v xxd >/dev/null 2>&1 || need+=(xxd)
# The key-import test wraps material with the real `openssl pkeyutl`, as docs/KEYS.md shows.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# fio_verify (tests/mount_tools.rs) checks random writes with fio's own verifier.
command -v fio >/dev/null 2>&1 || need+=(fio)
# The backup tests (tests/backup_tools.rs) back BACKING up with restic and rsync.
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
# The PKCS#11 custody tests (crates/envelopefs-hsm, tests/hsm_live.rs) run against throwaway
# SoftHSM2 tokens and list their objects with opensc's pkcs11-tool.
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(libsofthsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
if ((${#need[@]} == 0)); then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "install-deps: missing ${need[*]}; run: sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
