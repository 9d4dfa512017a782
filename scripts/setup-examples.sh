#!/usr/bin/env bash
# The Python and TypeScript receiver examples' dependencies (the official standardwebhooks
# libraries): a virtualenv in consumer-examples/python/.venv and node_modules + dist/ in
# consumer-examples/typescript; the API fuzzer schemathesis in tests/schemathesis/.venv;
# and the console's browser tests' playwright-core and axe-core in tests/console (no
# browser download: they drive Debian's Chromium, which scripts/install-deps.sh
# installs). Installs Node.js from Debian when missing. Idempotent: quick when already
# set up.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/consumer-examples/python"
TS="$ROOT/consumer-examples/typescript"

if [[ ! -x "$PY/.venv/bin/python" ]] || ! "$PY/.venv/bin/python" -c "import standardwebhooks" 2>/dev/null \
   || [[ "$PY/requirements.txt" -nt "$PY/.venv/.installed" ]]; then
  echo "setting up the Python example (venv, standardwebhooks)..." >&2
  python3 -m venv "$PY/.venv"
  "$PY/.venv/bin/pip" install -q --disable-pip-version-check -r "$PY/requirements.txt" >&2
  touch "$PY/.venv/.installed"
fi

# The API fuzzer schemathesis (tests/tests/api_fuzz.rs), in a virtualenv of its own.
ST="$ROOT/tests/schemathesis"
if [[ ! -x "$ST/.venv/bin/schemathesis" ]] || [[ "$ST/requirements.txt" -nt "$ST/.venv/.installed" ]]; then
  echo "setting up schemathesis (venv)..." >&2
  python3 -m venv "$ST/.venv"
  "$ST/.venv/bin/pip" install -q --disable-pip-version-check -r "$ST/requirements.txt" >&2
  touch "$ST/.venv/.installed"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "installing Node.js and npm..." >&2
  if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq nodejs npm >&2
fi
if [[ ! -d "$TS/node_modules/standardwebhooks" ]] || [[ "$TS/package-lock.json" -nt "$TS/node_modules/.installed" ]]; then
  echo "setting up the TypeScript example (npm ci)..." >&2
  (cd "$TS" && npm ci --silent --no-audit --no-fund >&2)
  touch "$TS/node_modules/.installed"
fi
if [[ ! -f "$TS/dist/receiver.js" ]] || [[ ! -f "$TS/dist/stream_client.js" ]] \
   || [[ "$TS/receiver.ts" -nt "$TS/dist/receiver.js" ]] || [[ "$TS/stream_client.ts" -nt "$TS/dist/stream_client.js" ]]; then
  (cd "$TS" && npx tsc -p . >&2)
fi

# The console's browser tests (tests/tests/it/console.rs). playwright-core downloads no
# browser; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD makes sure of it.
CT="$ROOT/tests/console"
if [[ ! -d "$CT/node_modules/playwright-core" ]] || [[ "$CT/package-lock.json" -nt "$CT/node_modules/.installed" ]]; then
  echo "setting up the console's browser tests (npm ci)..." >&2
  (cd "$CT" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund >&2)
  touch "$CT/node_modules/.installed"
fi
