#!/usr/bin/env bash
# The black-box suite again, with every in-process gateway a cluster node
# on a redis-server of its own (a free port, nothing on disk), stopped by
# its PID at the end. Tests of embedded-only behaviour say so and return.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
  echo "redis-server is not installed (apt-get install redis-server): cluster pass skipped" >&2
  [ -z "${CI:-}" ] || exit 1
  exit 0
fi
# redis-server cannot pick its own port: one is found free, and the server
# that answers there must be the one started here (its process_id), or
# another process took the port first and a new one is tried.
PID=
trap '[ -z "$PID" ] || { kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; }' EXIT
ours() {
  exec 3<>/dev/tcp/127.0.0.1/"$PORT" || return 1
  printf 'INFO server\r\nQUIT\r\n' >&3
  timeout 2 head -c 4096 <&3 | tr -d '\r' | grep -qx "process_id:$PID"
  local found=$?
  exec 3<&-
  return $found
}
for _ in 1 2 3 4 5; do
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --logfile "" >/dev/null &
  PID=$!
  for _ in $(seq 1 100); do
    kill -0 "$PID" 2>/dev/null || break
    (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
    sleep 0.05
  done
  ours 2>/dev/null && break
  kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=
done
[ -n "$PID" ] || { echo "redis-server could not get a port of its own in 5 tries" >&2; exit 1; }
RATATOSKR_TEST_REDIS="redis://127.0.0.1:$PORT/" ${CARGO:-cargo} test --test it
