#!/usr/bin/env bash
# The local broker under a working day's backlog (issue #15): 100,000 events, 3
# partners, 2 dispatcher instances, one broker per candidate storage. Settings:
# BENCH_CANDIDATES, BENCH_EVENTS, BENCH_ORDERS, BENCH_TIMEOUT_SECS, BENCH_KAFKA_OPTIONS
# (tests/benches/backlog.rs); BENCH_PROFILE=release for optimised dispatchers.
exec "$(dirname "$0")/bench-on-stack.sh" backlog
