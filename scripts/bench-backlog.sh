#!/usr/bin/env bash
# The local broker under a working day's backlog: starts the registry (and the default
# stack) on free ports, runs `cargo bench -p e2e --bench backlog` (100,000 events, 3
# partners, 2 dispatcher instances, one broker per candidate storage), stops what it
# started. Settings pass through: BENCH_CANDIDATES, BENCH_EVENTS, BENCH_ORDERS,
# BENCH_TIMEOUT_SECS (tests/benches/backlog.rs). BENCH_PROFILE=release measures optimised
# dispatchers (default: dev, the binaries the quickstart and tests use; the broker is an
# optimised build either way).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export STACK_DIR; STACK_DIR="$(mktemp -d /tmp/orderhooks-bench.XXXXXX)"
cleanup() { "$ROOT/scripts/stack.sh" purge >/dev/null 2>&1 || true; }
trap cleanup EXIT
KAFKA_PORT=0 REGISTRY_PORT=0 "$ROOT/scripts/stack.sh" up >/dev/null
source "$STACK_DIR/env"
PROFILE="${BENCH_PROFILE:-dev}"
cargo build --quiet --profile "$PROFILE" -p dispatcher --bin dispatcher
cargo bench --profile "$PROFILE" -p e2e --bench backlog
