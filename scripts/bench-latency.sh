#!/usr/bin/env bash
# Time to webhook per hop, next to the broker's floor (issue #16): starts the registry on
# free ports, runs `cargo bench -p e2e --bench latency`, stops what it started.
# Settings pass through: BENCH_RATES (100,1000), BENCH_SECS (15); BENCH_PROFILE=release
# measures optimised dispatchers (default: dev).
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
cargo bench --profile "$PROFILE" -p e2e --bench latency
