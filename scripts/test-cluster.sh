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
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --logfile "" >/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.05; done
RATATOSKR_TEST_REDIS="redis://127.0.0.1:$PORT/" ${CARGO:-cargo} test --test it
