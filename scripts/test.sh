#!/usr/bin/env bash
# Runs every test: installs the test broker when missing, builds, starts a private stack
# on free ports in a temporary directory, runs `cargo test --workspace`, stops the stack.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/install-nisshi.sh"
"$ROOT/scripts/setup-examples.sh"
cargo build --workspace --all-targets
export STACK_DIR; STACK_DIR="$(mktemp -d /tmp/orderhooks-test.XXXXXX)"
cleanup() { "$ROOT/scripts/stack.sh" purge >/dev/null 2>&1 || true; }
trap cleanup EXIT
KAFKA_PORT=0 REGISTRY_PORT=0 "$ROOT/scripts/stack.sh" up >/dev/null
# shellcheck disable=SC1091
source "$STACK_DIR/env"
cargo test --workspace "$@"
