#!/usr/bin/env bash
# Screenshots of the web console's pages into docs/console/, as the browser tests see
# them (a phone's width, 390 px): runs the console's e2e test on a private stack with
# CONSOLE_SCREENSHOTS set. Needs what scripts/test.sh installs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/install-nisshi.sh"
"$ROOT/scripts/setup-examples.sh"
export STACK_DIR; STACK_DIR="$(mktemp -d /tmp/orderhooks-shots.XXXXXX)"
cleanup() { "$ROOT/scripts/stack.sh" purge >/dev/null 2>&1 || true; }
trap cleanup EXIT
KAFKA_PORT=0 REGISTRY_PORT=0 "$ROOT/scripts/stack.sh" up >/dev/null
# shellcheck disable=SC1091
source "$STACK_DIR/env"
mkdir -p "$ROOT/docs/console"
CONSOLE_SCREENSHOTS="$ROOT/docs/console" cargo test -q -p e2e --test it console:: >&2
ls "$ROOT/docs/console"
