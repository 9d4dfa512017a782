#!/usr/bin/env bash
# Installs the Kafka-protocol test broker `nisshi` into ~/.cargo/bin when it is missing.
# About 10 minutes on 2 cores the first time; later runs reuse the cached binary.
set -euo pipefail
VERSION=0.8.1
# NISSHI_BIN: another build, used as it is (to compare versions); nothing installed.
if [[ -n "${NISSHI_BIN:-}" ]]; then
  [[ -x "$NISSHI_BIN" ]] || { echo "NISSHI_BIN=$NISSHI_BIN is not an executable" >&2; exit 1; }
  exit 0
fi
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
if [[ -x "$BIN" ]] && [[ "$("$BIN" --version 2>/dev/null)" == "nisshi ${VERSION}" ]]; then
  exit 0
fi
echo "installing nisshi ${VERSION} (one time, about 10 minutes)..." >&2
# Only the engines we use: SQLite (libsql) for the stack, memory (dynostore) for some
# benchmarks; 0.8's defaults add PostgreSQL. --ignore-rust-version: its `rama` 0.4
# declares Rust 1.96, and builds and runs on this machine's 1.95 (the suite passes on it).
cargo install "nisshi@${VERSION}" --locked --ignore-rust-version \
  --no-default-features --features libsql,dynostore >&2
