#!/usr/bin/env bash
# Runs one local-broker benchmark of tests/benches/ (`backlog`, `latency`, `partners`, `poison` or `readback`): starts the
# stack's registry on free ports, builds the dispatcher in BENCH_PROFILE (dev, or
# release for optimised dispatchers), runs `cargo bench -p e2e --bench NAME`, and stops
# what it started. Each benchmark starts brokers of its own.
set -euo pipefail
NAME="${1:?usage: scripts/bench-on-stack.sh backlog|latency|partners|poison|readback}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export STACK_DIR; STACK_DIR="$(mktemp -d /tmp/orderhooks-bench.XXXXXX)"
cleanup() { "$ROOT/scripts/stack.sh" purge >/dev/null 2>&1 || true; }
trap cleanup EXIT
KAFKA_PORT=0 REGISTRY_PORT=0 "$ROOT/scripts/stack.sh" up >/dev/null
source "$STACK_DIR/env"
PROFILE="${BENCH_PROFILE:-dev}"
cargo build --quiet --profile "$PROFILE" -p dispatcher --bin dispatcher
cargo bench --profile "$PROFILE" -p e2e --bench "$NAME"
