#!/usr/bin/env bash
# Benchmarks are not measured yet: the benchmark issue adds daemon-vs-direct comparisons for each
# operation (TPM sign, HSM sign/unwrap, envelope open) and writes BENCHMARKS.md.
echo "bench: no benchmarks yet — daemon-vs-backend comparisons land with the benchmark issue."
