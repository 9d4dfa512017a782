#!/usr/bin/env bash
# Thousands of partners on one dispatcher (issue #14): for 100 and 1,000 partners,
# seconds until every partner was served after `dispatcher run`, threads, RSS, idle CPU
# of dispatcher and broker, and the longest gap in the others' deliveries while one
# partner is added. Settings: BENCH_PARTNERS, BENCH_EVENTS, BENCH_GAP_RATE,
# BENCH_TIMEOUT_SECS, BENCH_STORAGE, BENCH_DISPATCHER_BIN, BENCH_KAFKA_OPTIONS
# (tests/benches/partners.rs); BENCH_PROFILE=release for an optimised dispatcher.
exec "$(dirname "$0")/bench-on-stack.sh" partners
