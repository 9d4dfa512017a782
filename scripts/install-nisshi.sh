#!/usr/bin/env bash
# Installs the Kafka-protocol test broker `nisshi` into ~/.cargo/bin when it is missing.
# About 14 minutes on 2 cores the first time; later runs reuse the cached binary.
set -euo pipefail
VERSION=0.7.0-pre.2
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "${VERSION}"; then
  exit 0
fi
echo "installing nisshi ${VERSION} (one time, about 14 minutes)..." >&2
cargo install "nisshi@${VERSION}" --locked --features libsql,dynostore >&2
