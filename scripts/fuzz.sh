#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/targets) for FUZZ_SECS seconds each (default 60), starting
# from and adding to its committed corpus (fuzz/corpus/TARGET); a crash leaves its input in
# fuzz/artifacts/TARGET (commit it with the fix: `make test` replays it). cargo-fuzz is installed
# from crates.io when missing; libFuzzer needs nightly flags, which stable rustc accepts with
# RUSTC_BOOTSTRAP=1. Options: FUZZ_SECS, FUZZ_TARGETS (space-separated names; default all).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
secs="${FUZZ_SECS:-60}"
command -v cargo-fuzz >/dev/null || "$CARGO" install cargo-fuzz --locked --quiet
targets="${FUZZ_TARGETS:-$(ls fuzz/targets/fuzz_targets | sed 's/\.rs$//')}"
export RUSTC_BOOTSTRAP=1
summary=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=$(mktemp)
  echo "fuzz: $t for ${secs}s"
  if ! "$CARGO" fuzz run --fuzz-dir fuzz/targets "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  summary+=("$t: ${runs:-?} executions in ${secs}s, corpus $(ls "fuzz/corpus/$t" | wc -l) inputs")
  rm -f "$log"
done
printf 'fuzz: %s\n' "${summary[@]}"
