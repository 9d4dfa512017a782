#!/usr/bin/env bash
# The local stack: a Kafka-protocol broker (nisshi, durable SQLite storage with the
# indexes of scripts/nisshi-indexes.py) and the schema registry on 127.0.0.1, with the
# topics of config/topics.txt.
#
#   scripts/stack.sh up     start (installing nisshi if missing), create topics, wait until ready
#   scripts/stack.sh down   stop what `up` started (by pid), keep the data
#   scripts/stack.sh purge  stop and delete the data directory
#   scripts/stack.sh env    print the environment for clients (source it)
#
# Settings (environment): STACK_DIR (default ./.stack), KAFKA_PORT (9092),
# REGISTRY_PORT (8081); a port of 0 picks a free one.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_for_port() { # port seconds what
  python3 - "$1" "$2" "$3" <<'PY'
import socket, sys, time
port, limit, what = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.time() + limit
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"{what} did not open 127.0.0.1:{port} within {limit:.0f} s")
PY
}

start() { # name workdir logfile command...
  local name="$1" dir="$2" log="$3"; shift 3
  (cd "$dir" && exec nohup "$@" >"$log" 2>&1) &
  echo $! >"$STACK_DIR/$name.pid"
}

stop_pid() { # name
  local file="$STACK_DIR/$1.pid"
  [[ -f "$file" ]] || return 0
  local pid; pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

up() {
  mkdir -p "$STACK_DIR"
  if [[ -f "$STACK_DIR/env" ]] && [[ -f "$STACK_DIR/nisshi.pid" ]] && kill -0 "$(cat "$STACK_DIR/nisshi.pid")" 2>/dev/null; then
    echo "stack already running ($STACK_DIR/env)" >&2; cat "$STACK_DIR/env"; return 0
  fi
  "$ROOT/scripts/install-deps.sh"
  "$ROOT/scripts/install-nisshi.sh"
  (cd "$ROOT" && cargo build --quiet -p schema-registry -p producer --bins)
  [[ "$KAFKA_PORT" == 0 ]] && KAFKA_PORT="$(free_port)"
  [[ "$REGISTRY_PORT" == 0 ]] && REGISTRY_PORT="$(free_port)"
  mkdir -p "$STACK_DIR/kafka" "$STACK_DIR/registry"
  local url="tcp://127.0.0.1:$KAFKA_PORT"
  # nisshi resolves the sqlite URL's path against its working directory (even an
  # absolute one), so it runs inside its data directory with a relative path.
  # (NISSHI_BIN: another build of the broker, to compare versions.)
  local nisshi="${NISSHI_BIN:-${CARGO_HOME:-$HOME/.cargo}/bin/nisshi}" version made
  version="$("$nisshi" --version | awk '{print $NF}')"
  # (Data from before the version file was written was 0.7's.)
  made="$(cat "$STACK_DIR/kafka/nisshi.version" 2>/dev/null || echo "0.7.0-pre.2")"
  # A database of another nisshi version is refused by it (0.8 changed the schema).
  if [[ -f "$STACK_DIR/kafka/nisshi.db" ]] && [[ "$made" != "$version" ]]; then
    echo "the local broker's data in $STACK_DIR/kafka was made by nisshi $made, which nisshi $version cannot read: scripts/stack.sh purge (deletes the local stack's data), then up" >&2
    exit 1
  fi
  echo "$version" >"$STACK_DIR/kafka/nisshi.version"
  start nisshi "$STACK_DIR/kafka" "$STACK_DIR/nisshi.log" "$nisshi" broker \
    --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine "sqlite://nisshi.db"
  start registry "$STACK_DIR" "$STACK_DIR/registry.log" "$TARGET/schema-registry" \
    --listen "127.0.0.1:$REGISTRY_PORT" --data-dir "$STACK_DIR/registry"
  wait_for_port "$KAFKA_PORT" 60 "nisshi (log: $STACK_DIR/nisshi.log)"
  # Indexes nisshi's SQLite schema lacks (0.7's headers were a full scan per fetched
  # record; docs/ARCHITECTURE.md, local broker).
  python3 "$ROOT/scripts/nisshi-indexes.py" "$STACK_DIR/kafka/nisshi.db" || { down; exit 1; }
  wait_for_port "$REGISTRY_PORT" 30 "schema-registry (log: $STACK_DIR/registry.log)"
  cat >"$STACK_DIR/env" <<ENV
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
export SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT
ENV
  local name partitions settings
  while read -r name partitions settings; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    local args=(--brokers "127.0.0.1:$KAFKA_PORT" ensure-topic --name "$name" --partitions "$partitions")
    for s in $settings; do args+=(--config "$s"); done
    "$TARGET/producer" "${args[@]}" >&2
  done <"$ROOT/config/topics.txt"
  echo "stack up: broker nisshi 127.0.0.1:$KAFKA_PORT (storage: SQLite, durable, indexed; $STACK_DIR/kafka/nisshi.db), registry http://127.0.0.1:$REGISTRY_PORT (data: $STACK_DIR)" >&2
  cat "$STACK_DIR/env"
}

down() {
  stop_pid registry
  stop_pid nisshi
  rm -f "$STACK_DIR/env"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  purge) down; rm -rf "$STACK_DIR" ;;
  env) cat "$STACK_DIR/env" ;;
  *) echo "usage: $0 up|down|purge|env" >&2; exit 2 ;;
esac
