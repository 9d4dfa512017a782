#!/usr/bin/env bash
# Quickstart on a fresh machine: starts the local stack (broker + registry, installing the
# broker the first time), starts the HTTP ingest, publishes sample orders through the CLI
# and over HTTP, and shows them in the orders topic decoded through the registry.
# The stack keeps running afterwards; `scripts/stack.sh down` stops it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --quiet -p producer -p schema-registry -p consumer-examples --bins
scripts/stack.sh up >/dev/null
# shellcheck disable=SC1091
source "${STACK_DIR:-$ROOT/.stack}/env"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

INGEST_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$BIN/producer" serve --listen "127.0.0.1:$INGEST_PORT" >/dev/null 2>"${STACK_DIR:-$ROOT/.stack}/ingest.log" &
INGEST_PID=$!
trap 'kill -TERM $INGEST_PID 2>/dev/null || true; wait $INGEST_PID 2>/dev/null || true' EXIT

echo "== 1. publish 20 sample orders with the CLI load generator"
"$BIN/producer" load --count 20 --orders 5 --partners 2 --quiet

echo "== 2. publish one order over HTTP ingest (POST /v1/events)"
python3 - "$INGEST_PORT" <<'PY'
import json, sys, time, urllib.request, urllib.error
port = sys.argv[1]
event = {"type": "order.created", "order_id": "quickstart-1", "partner_id": "partner-0",
         "order": {"customer_ref": "C-1", "status": "PENDING",
                   "items": [{"sku": "SKU-1", "name": "Espresso beans", "quantity": 2,
                              "unit_price": {"amount_minor": 1250, "currency": "EUR"}}],
                   "total": {"amount_minor": 2500, "currency": "EUR"}}}
for _ in range(100):  # wait for the ingest to listen
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", json.dumps(event).encode(),
                                     {"content-type": "application/json"})
        print("202 Accepted:", urllib.request.urlopen(req, timeout=10).read().decode())
        break
    except urllib.error.URLError as e:
        if isinstance(e, urllib.error.HTTPError):
            sys.exit(f"ingest answered {e.code}: {e.read().decode()}")
        time.sleep(0.2)
else:
    sys.exit("ingest did not start")
bad = dict(event, order_id="")
try:
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", json.dumps(bad).encode(),
                                                  {"content-type": "application/json"}), timeout=10)
except urllib.error.HTTPError as e:
    print(f"a bad event gets {e.code}:", e.read().decode())
PY

echo "== 3. the orders topic, decoded through the registry (the last few; amounts shown in major units)"
"$BIN/orders-tail" --idle-secs 5 2>/dev/null | sort -t@ -k1,1 -s | tail -n 8
echo "== done. The stack is still running: source ${STACK_DIR:-$ROOT/.stack}/env to use it, scripts/stack.sh down to stop it."
