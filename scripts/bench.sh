#!/usr/bin/env bash
# Daemon-vs-direct benchmarks: builds the release `custodyd`, `custody` and `custody-bench`, then
# runs `custody-bench`, which provisions its own swtpm + SoftHSM token + custodyd, measures each
# operation through the daemon and directly on the backend (1–64 callers, latency, CPU per op),
# a flood from one uid against another's signatures, memory, start-up with a 10,000-key pool, the
# daemon's stage timing and (with valgrind) its instructions per request; prints the tables and
# writes BENCHMARKS.md and target/bench/report.json. Options (environment): BENCH_SECS (one
# measurement, default 1.5), BENCH_REPS (default 3), BENCH_POOL_KEYS (default 10000),
# BENCH_CALLGRIND=0, BENCH_QUICK=1 (ping and HSM sign only), BENCH_ONLY=a,b (only the rows whose
# operation contains a or b; nothing written), BENCH_OUT, BENCH_JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
# The harness finds custodyd/custody next to its own executable: target/release/.
"$CARGO" build --release --locked -p custody-daemon -p custody-client -p custody-bench --bin custodyd --bin custody --bin custody-bench
start=$(date +%s)
target/release/custody-bench
echo "bench: done in $(( $(date +%s) - start )) s (results in ${BENCH_OUT:-BENCHMARKS.md})"
