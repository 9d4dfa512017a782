#!/usr/bin/env bash
# Runs every test: installs the test broker when missing, builds, starts a private stack
# on free ports in a temporary directory, runs `cargo test --workspace`, stops the stack.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# A full build and the suite's brokers need several gigabytes; say so before a compiler
# fails half way with "No space left on device".
free_kb="$(df -Pk "$ROOT" | awk 'NR==2 {print $4}')"
if [[ -n "$free_kb" && "$free_kb" -lt $((8 * 1024 * 1024)) ]]; then
  echo "warning: $((free_kb / 1024)) MiB free on the disk holding $ROOT; a clean build and the tests need about 8 GiB (cargo clean, or remove target/debug/incremental)" >&2
fi
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
