#!/usr/bin/env bash
# custodyd against Parsec on the same SoftHSM token (`make bench-peers`). Builds, once, Parsec
# (`parsec-service` 1.5 from crates.io with its PKCS#11 provider) into target/peers/parsec/,
# then the release `custodyd` (main workspace) and the peer harness (`bench/peers/`, a
# workspace of its own with its own Cargo.lock, built into target/peers/build/), and runs it:
# RSA-2048 sign directly, through custodyd and through Parsec (default config and
# `idle_listener_sleep_duration = 1`) at 1, 2 and 4 callers, interleaved, plus ping. Prints the
# table, replaces the peer section of BENCHMARKS.md and writes target/bench/peers.json.
# Environment: PEERS_SECS (one measurement, default 1.5), PEERS_ROUNDS (default 5),
# PARSEC_VERSION_REQ (default ~1.5).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
root="$PWD/target/peers/parsec"
req="${PARSEC_VERSION_REQ:-~1.5}"
if [ ! -x "$root/bin/parsec" ]; then
  echo "bench-peers: building Parsec ($req, PKCS#11 provider) into $root (once; minutes)"
  CARGO_TARGET_DIR="$PWD/target/peers/parsec-build" "$CARGO" install --locked --quiet \
    --root "$root" parsec-service --version "$req" --features pkcs11-provider
fi
"$CARGO" build --release --locked -p custody-daemon --bin custodyd
CARGO_TARGET_DIR="$PWD/target/peers/build" "$CARGO" build --release --locked \
  --manifest-path bench/peers/Cargo.toml
# The harness finds custodyd next to its own executable: target/release/.
cp target/peers/build/release/custody-peers target/release/custody-peers
start=$(date +%s)
target/release/custody-peers
echo "bench-peers: done in $(( $(date +%s) - start )) s (table in ${PEERS_OUT:-BENCHMARKS.md}, figures in ${PEERS_JSON:-target/bench/peers.json})"
