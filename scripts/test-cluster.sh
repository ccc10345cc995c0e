#!/usr/bin/env bash
# The black-box suite again, with every in-process gateway a cluster node
# on a redis-server of its own (on a Unix socket in a fresh directory, so
# no TCP port is picked and raced for; nothing on disk), stopped by its PID
# at the end. Tests of embedded-only behaviour say so and return.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
  echo "redis-server is not installed (apt-get install redis-server): cluster pass skipped" >&2
  [ -z "${CI:-}" ] || exit 1
  exit 0
fi
DIR=$(mktemp -d)
SOCKET="$DIR/redis.sock"
PID=
trap '[ -z "$PID" ] || { kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; }; rm -rf "$DIR"' EXIT
redis-server --port 0 --unixsocket "$SOCKET" --unixsocketperm 700 --save "" --appendonly no --logfile "" >/dev/null &
PID=$!
for _ in $(seq 1 200); do
  kill -0 "$PID" 2>/dev/null || { echo "redis-server stopped at start" >&2; exit 1; }
  [ -S "$SOCKET" ] && break
  sleep 0.05
done
[ -S "$SOCKET" ] || { echo "redis-server did not open $SOCKET" >&2; exit 1; }
RATATOSKR_TEST_REDIS="redis+unix://$SOCKET" ${CARGO:-cargo} test --test it
