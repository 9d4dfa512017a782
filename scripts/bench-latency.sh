#!/usr/bin/env bash
# Time to webhook per hop next to the broker's floor (issue #16). Settings: BENCH_RATES
# (100,1000), BENCH_SECS (15), BENCH_KAFKA_OPTIONS (tests/benches/latency.rs);
# BENCH_PROFILE=release for optimised dispatchers.
exec "$(dirname "$0")/bench-on-stack.sh" latency
