#!/usr/bin/env bash
# System packages the build needs beyond the Rust toolchain, gcc and Python: OpenSSL
# headers and pkg-config (for native-tls). Installed only when missing (Debian, as root).
set -euo pipefail
if pkg-config --exists openssl 2>/dev/null; then
  exit 0
fi
echo "installing libssl-dev and pkg-config..." >&2
if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq libssl-dev pkg-config >&2
