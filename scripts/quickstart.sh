#!/usr/bin/env bash
# Quickstart on a fresh machine: starts the local stack (broker + registry, installing the
# broker the first time), an example partner receiver, the dispatcher and the HTTP ingest;
# publishes sample orders through the CLI and over HTTP, and shows them arriving at the
# partner as signed webhooks. Everything but the stack is stopped at the end;
# `scripts/stack.sh down` stops the stack.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh
cargo build --quiet -p producer -p schema-registry -p dispatcher -p consumer-examples --bins
scripts/stack.sh up >/dev/null
# shellcheck disable=SC1091
source "${STACK_DIR:-$ROOT/.stack}/env"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

DIR="${STACK_DIR:-$ROOT/.stack}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
INGEST_PORT="$(free_port)"; PARTNER_PORT="$(free_port)"; METRICS_PORT="$(free_port)"
SECRET="$(python3 -c 'import base64, os; print("whsec_" + base64.b64encode(os.urandom(32)).decode())')"
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; }
trap stop_all EXIT

# The example partner (verifies signatures, deduplicates) and its subscription. The
# dispatcher may call 127.0.0.1 only because it is allowlisted here, for the demo.
"$BIN/partner-receiver" --listen "127.0.0.1:$PARTNER_PORT" --secret "$SECRET" >"$DIR/partner.out" 2>"$DIR/partner.log" &
PIDS+=($!)
cat >"$DIR/subscriptions.yaml" <<YAML
subscriptions:
  - id: partner-0-orders
    partner_id: partner-0
    url: http://127.0.0.1:$PARTNER_PORT/webhook
    event_types: [order.created, order.status_changed, order.cancelled]
    secrets: ["$SECRET"]
YAML
export DISPATCHER_SSRF_ALLOWLIST=127.0.0.1 DISPATCHER_SESSION_TIMEOUT_MS=6000
echo "== 0. subscribe partner-0 (webhooks to the example receiver on 127.0.0.1:$PARTNER_PORT)"
"$BIN/dispatcher" subscriptions apply "$DIR/subscriptions.yaml"
"$BIN/dispatcher" run --listen "127.0.0.1:$METRICS_PORT" >/dev/null 2>"$DIR/dispatcher.log" &
PIDS+=($!)
"$BIN/producer" serve --listen "127.0.0.1:$INGEST_PORT" >/dev/null 2>"$DIR/ingest.log" &
PIDS+=($!)

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
"$BIN/orders-tail" --idle-secs 5 2>/dev/null | sort -t@ -k1,1 -s | tail -n 5

echo "== 4. webhooks arriving at partner-0 (only partner-0's orders; signatures verified)"
for _ in $(seq 1 60); do
  [[ "$(grep -c 'webhook-id' "$DIR/partner.out" || true)" -ge 10 ]] && break
  sleep 1
done
grep 'webhook-id' "$DIR/partner.out" | tail -n 8
echo "   $(grep -c 'webhook-id' "$DIR/partner.out" || true) webhooks so far; dispatcher metrics: http://127.0.0.1:$METRICS_PORT/metrics"
curl -s "127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null | grep '^dispatcher_deliveries_total' || true
echo "== done. The stack is still running: source $DIR/env to use it, scripts/stack.sh down to stop it."
