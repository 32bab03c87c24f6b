#!/usr/bin/env bash
# The whole test suite in one command: installs what the tests need, then runs every unit,
# property and mount test. Mount tests need /dev/fuse (they skip, saying so, without it).
# The PKCS#11 tests (crates/envelopefs-hsm/tests, tests/hsm_*.rs) run against throwaway
# SoftHSM2 tokens, each in a temp dir of its own (SOFTHSM2_CONF set per test process); they
# skip without SoftHSM2 unless ENVELOPEFS_REQUIRE_HSM=1 (set by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Benchmarks are built (so they cannot rot) but not run: scripts/bench.sh and `cargo bench` do.
cargo build --benches
cargo test --workspace --lib --bins --tests --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"
# Every mount test again on volumes with plaintext names (`init --plaintext-names`, the format
# of volumes made before names were encrypted): both kinds of volume stay covered.
ENVELOPEFS_TEST_PLAINTEXT_NAMES=1 cargo test --workspace --tests --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"
