#!/usr/bin/env bash
# make cluster-demo: a redis-server and three Ratatoskr nodes on one
# machine, as in docs/cluster.md ("Run a cluster"). Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin ratatoskr
REDIS_PORT=${REDIS_PORT:-6390}
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT INT TERM
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --logfile "" >/dev/null &
PIDS+=($!)
sleep 0.3
for port in 8081 8082 8083; do
  target/release/ratatoskr --listen "127.0.0.1:$port" --redis-url "redis://127.0.0.1:$REDIS_PORT/" --log warn &
  PIDS+=($!)
done
sleep 0.5
echo "Redis:   redis://127.0.0.1:$REDIS_PORT/"
for port in 8081 8082 8083; do echo "node:    http://127.0.0.1:$port/  (dashboard), /events, /api/events"; done
echo "Post to one node, subscribe on another:"
echo "  curl -N http://127.0.0.1:8082/events &"
echo "  curl -d '{\"hello\":1}' -H 'content-type: application/json' 'http://127.0.0.1:8081/api/events?device=mac:112233445566'"
wait
