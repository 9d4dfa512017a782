#!/usr/bin/env bash
# System packages beyond the Rust toolchain, gcc and Python, installed only when missing
# (Debian, as root or with sudo):
# - libssl-dev and pkg-config, for native-tls;
# - prometheus, for `promtool`, which the tests use to check the alert rules and the
#   Grafana dashboard's queries (no Prometheus server is started);
# - chromium, the browser the console's tests drive (tests/console; never a downloaded one).
set -euo pipefail
packages=()
pkg-config --exists openssl 2>/dev/null || packages+=(libssl-dev pkg-config)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
[[ -x /usr/bin/chromium ]] || packages+=(chromium)
if [[ ${#packages[@]} == 0 ]]; then
  exit 0
fi
echo "installing ${packages[*]}..." >&2
if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
