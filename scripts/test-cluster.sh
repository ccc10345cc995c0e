#!/usr/bin/env bash
# The black-box suite again, twice: first with every in-process gateway a
# cluster node on a redis-server of its own (on a Unix socket in a fresh
# directory, so no TCP port is picked and raced for; nothing on disk), then
# with every gateway a node of a three-primary Redis Cluster started here
# on free ports (--redis-mode cluster). Each server is stopped by its PID
# at the end. Tests of embedded-only behaviour say so and return.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "redis-server or redis-cli is not installed (apt-get install redis-server): cluster passes skipped" >&2
  [ -z "${CI:-}" ] || exit 1
  exit 0
fi
DIR=$(mktemp -d)
SOCKET="$DIR/redis.sock"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap stop_all EXIT
wait_for_socket() { # pid socket
  for _ in $(seq 1 200); do
    kill -0 "$1" 2>/dev/null || return 1
    [ -S "$2" ] && return 0
    sleep 0.05
  done
  return 1
}

redis-server --port 0 --unixsocket "$SOCKET" --unixsocketperm 700 --save "" --appendonly no --logfile "" >/dev/null &
PIDS+=($!)
wait_for_socket "${PIDS[-1]}" "$SOCKET" || { echo "redis-server did not open $SOCKET" >&2; exit 1; }
RATATOSKR_TEST_REDIS="redis+unix://$SOCKET" ${CARGO:-cargo} test --test it

# Three primaries on ports that are free, with their cluster bus ports
# (10000 above) free too; a port taken in between stops that server at
# start, and the whole set is tried again.
start_cluster() {
  local ports
  ports=$(python3 - <<'PY'
import socket
found = []
while len(found) < 3:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
    if p > 55000 or p in found:
        continue
    try:
        with socket.socket() as b:
            b.bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    found.append(p)
print(" ".join(map(str, found)))
PY
)
  SEEDS=()
  local nodes=()
  for port in $ports; do
    mkdir -p "$DIR/$port"
    (cd "$DIR/$port" && exec redis-server --port "$port" --bind 127.0.0.1 --unixsocket "$DIR/$port/redis.sock" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --save "" --appendonly no --logfile "" >/dev/null) &
    PIDS+=($!)
    wait_for_socket "${PIDS[-1]}" "$DIR/$port/redis.sock" || return 1
    nodes+=("127.0.0.1:$port")
    SEEDS+=("redis://127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-yes >/dev/null || return 1
  for _ in $(seq 1 100); do
    local ok=0
    for port in $ports; do
      redis-cli -s "$DIR/$port/redis.sock" cluster info | grep -q cluster_state:ok && ok=$((ok + 1))
    done
    [ "$ok" = 3 ] && return 0
    sleep 0.1
  done
  return 1
}
for attempt in 1 2 3; do
  start_cluster && break
  [ "$attempt" = 3 ] && { echo "no Redis Cluster could be started in 3 tries" >&2; exit 1; }
done
RATATOSKR_TEST_REDIS=$(IFS=,; echo "${SEEDS[*]}") RATATOSKR_TEST_REDIS_MODE=cluster \
  ${CARGO:-cargo} test --test it
