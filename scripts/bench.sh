#!/usr/bin/env bash
# Daemon-vs-direct benchmarks: builds the release `custodyd`, `custody` and `custody-bench`, then
# runs `custody-bench`, which provisions its own swtpm + SoftHSM token + custodyd, measures each
# operation through the daemon and directly on the backend, prints the table and writes
# BENCHMARKS.md. Options (environment): BENCH_SECS (one measurement, default 1.5),
# BENCH_OUT (output file, default BENCHMARKS.md at the workspace root).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
# The harness finds custodyd/custody next to its own executable: target/release/.
"$CARGO" build --release --locked -p custody-daemon -p custody-client -p custody-bench --bin custodyd --bin custody --bin custody-bench
start=$(date +%s)
target/release/custody-bench
echo "bench: done in $(( $(date +%s) - start )) s (results in ${BENCH_OUT:-BENCHMARKS.md})"
