#!/usr/bin/env bash
# make bench: Ratatoskr side by side with the roofline server and nginx+nchan
# (from ../shared/tools, when present), in one run, on this machine.
# Servers are pinned to CPU 0 and the load tools to CPU 1. Every run is
# bounded in count and time and targets 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench-results}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
SHARED=../shared/tools
GW_PORT=18080 ROOF_PORT=18070 NCHAN_PORT=8090

# BENCH_GATEWAY=path/to/ratatoskr compares another build (e.g. the previous
# commit's) with the same load tools.
GATEWAY=${BENCH_GATEWAY:-target/release/ratatoskr}
[ -n "${BENCH_GATEWAY:-}" ] || cargo build --release -q -p ratatoskr --bin ratatoskr
cargo build --release -q -p ratatoskr-bench
BENCH=target/release/ratatoskr-bench
SSEBENCH=""
if [ -d "$SHARED/ssebench" ]; then
  cargo build --release -q --manifest-path "$SHARED/ssebench/Cargo.toml" --target-dir target/ssebench
  SSEBENCH=target/ssebench/release/ssebench
fi
HAVE_NCHAN=0
if [ -x "$SHARED/peers/nchan.sh" ]; then
  if ! [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-nchan wrk >/dev/null 2>&1 ||
      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-nchan wrk >/dev/null 2>&1)) || true
  fi
  [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] && HAVE_NCHAN=1
fi

# Ingest: wrk, 8 connections, 5 s, a 200-byte JSON POST; best of 3.
BODY='{"seq":1,"ts":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = '"'"'%s'"'"'\n' "$BODY" > "$OUT/post.lua"
ingest() { # label url [script]
  local rps best=0
  for _ in 1 2 3; do
    rps=$(timeout 30 taskset -c 1 wrk -t1 -c8 -d5s -s "${3:-$OUT/post.lua}" "$2" | awk '/Requests\/sec/ {print $2}')
    best=$(python3 -c "print(max(float('${rps:-0}'), float('$best')))")
  done
  echo "{\"label\":\"$1\",\"ingest_per_s\":$best}" >> "$RESULTS"
}
# An NDJSON batch of 100 such events per POST.
python3 - "$OUT/batch.lua" "$BODY" <<'PY'
import sys
body = "\n".join([sys.argv[2]] * 100) + "\n"
open(sys.argv[1], "w").write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/x-ndjson"\nwrk.body = [[' + body + ']]\n')
PY

# BENCH_SCENARIOS="5 6" make bench runs only those sections.
SCENARIOS=" ${BENCH_SCENARIOS:-1 2 3 4 5 6 7 8 9 10} "
want() { [[ "$SCENARIOS" == *" $1 "* ]]; }

SERVER_PID=""
stop_server() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; SERVER_PID=""; }
cleanup() { stop_server || true; [ -z "${NODE_PIDS+x}" ] || stop_nodes || true; [ "$HAVE_NCHAN" = 1 ] && "$SHARED/peers/nchan.sh" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
# --store memory unless the arguments name a store.
start_gateway() {
  local store=(--store memory)
  [[ " $* " == *" --store "* ]] && store=()
  taskset -c 0 "$GATEWAY" --listen 127.0.0.1:$GW_PORT --log warn "${store[@]}" "$@" & SERVER_PID=$!; wait_port $GW_PORT
}
start_roofline() { taskset -c 0 "$SSEBENCH" roofline --listen 127.0.0.1:$ROOF_PORT >/dev/null 2>&1 & SERVER_PID=$!; sleep 0.3; }
run() { # label, then ratatoskr-bench arguments
  local label=$1; shift
  timeout 180 taskset -c 1 "$BENCH" --label "$label" --max-time 120 "$@" >> "$RESULTS"
}

# The hub's lock hold per publish (id, replay ring, offers to every
# matching queue, forwarding tap): ratatoskr_fanout_duration_seconds, read
# after a run with one publisher (so the lock is never contended and the
# duration is the hold).
lock_hold() { # label
  curl -fsS "http://127.0.0.1:$GW_PORT/metrics" | python3 -c '
import json, sys
label = sys.argv[1]
buckets, total, count = [], 0.0, 0
for line in sys.stdin:
    if line.startswith("ratatoskr_fanout_duration_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), int(float(line.split()[-1]))))
    elif line.startswith("ratatoskr_fanout_duration_seconds_sum"):
        total = float(line.split()[-1])
    elif line.startswith("ratatoskr_fanout_duration_seconds_count"):
        count = int(float(line.split()[-1]))
p99 = next((le for le, c in buckets if count and c >= 0.99 * count), None)
print(json.dumps({"label": label, "publishes": count, "hold_us_mean": total / count * 1e6 if count else None,
                  "hold_us_p99_bucket": p99 * 1e6 if p99 not in (None, float("inf")) else None}))
' "$1" >> "$RESULTS"
}

if want 1; then
echo "== 1. broadcast, 200-byte events as fast as accepted; idle RSS; hub lock hold"
start_gateway
run "broadcast-1000 ratatoskr" -n 1000 -m 300 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events"
lock_hold "lock-1000"
stop_server
for n in 5000 10000; do
  start_gateway
  run "broadcast-$n ratatoskr" -n $n -m 300 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events"
  lock_hold "lock-$n"
  stop_server
  if [ -n "$SSEBENCH" ]; then
    start_roofline
    run "broadcast-$n roofline" -n $n -m 300 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$ROOF_PORT/events" --pub-url "http://127.0.0.1:$ROOF_PORT/pub"
    stop_server
  fi
  if [ "$HAVE_NCHAN" = 1 ]; then
    "$SHARED/peers/nchan.sh" start 1 0 >/dev/null
    run "broadcast-$n nchan" -n $n -m 300 --pid "$("$SHARED/peers/nchan.sh" pids)" --sub-url "http://127.0.0.1:$NCHAN_PORT/sub/bench" --pub-url "http://127.0.0.1:$NCHAN_PORT/pub/bench"
    "$SHARED/peers/nchan.sh" stop >/dev/null
  fi
done

fi
if want 2; then
echo "== 2. device fan-out: each subscriber on its own device, events to every device in turn"
for n in 100 10000; do
  start_gateway
  run "devices-$n ratatoskr" -n $n --devices $n -m 20000 --pid "$SERVER_PID" \
    --sub-url "http://127.0.0.1:$GW_PORT/events?device=dev-{i}" --pub-url "http://127.0.0.1:$GW_PORT/api/events?device=dev-{d}"
  stop_server
done

fi
if want 3; then
echo "== 3. 1,000 subscribers at 20 events/s (unsaturated latency), 3 rounds alternating with the roofline"
# One run's p99 moves by a fifth from run to run here: each round pairs a
# gateway run with a roofline run right after it, and the report takes the
# median of the rounds' ratios.
for round in 1 2 3; do
  start_gateway
  run "paced-1000-$round ratatoskr" -n 1000 -m 200 --rate 20 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events"
  stop_server
  if [ -n "$SSEBENCH" ]; then
    start_roofline
    run "paced-1000-$round roofline" -n 1000 -m 200 --rate 20 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$ROOF_PORT/events" --pub-url "http://127.0.0.1:$ROOF_PORT/pub"
    stop_server
  fi
done

fi
if want 4; then
echo "== 4. ingest with no subscribers (wrk -t1 -c8 -d5s, 200-byte POST, best of 3), and NDJSON batches of 100"
if command -v wrk >/dev/null; then
  start_gateway; ingest "ingest ratatoskr" "http://127.0.0.1:$GW_PORT/api/events"; stop_server
  # With the embedded event log (the redb store's default: every POST
  # answered once its event is written to the OS) against without it
  # (--store memory), alternated.
  for round in 1 2; do
    for mode in memory log; do
      if [ $mode = log ]; then
        LOG_DIR=$(mktemp -d); start_gateway --store redb --data-dir "$LOG_DIR"
      else
        start_gateway
      fi
      ingest "ingest-$mode-$round ratatoskr" "http://127.0.0.1:$GW_PORT/api/events"; stop_server
      [ $mode = log ] && rm -rf "$LOG_DIR"
    done
  done
  start_gateway; ingest "ingest-batch100 ratatoskr" "http://127.0.0.1:$GW_PORT/api/events" "$OUT/batch.lua"; stop_server
  if [ -n "$SSEBENCH" ]; then start_roofline; ingest "ingest roofline" "http://127.0.0.1:$ROOF_PORT/pub"; stop_server; fi
  if [ "$HAVE_NCHAN" = 1 ]; then
    "$SHARED/peers/nchan.sh" start 1 0 >/dev/null; ingest "ingest nchan" "http://127.0.0.1:$NCHAN_PORT/pub/bench"; "$SHARED/peers/nchan.sh" stop >/dev/null
  fi
else
  echo "wrk not installed: ingest scenario skipped" >&2
fi

fi
if want 5; then
echo "== 5. forwarding: 1,000 registrations over 100 webhook destinations (webhook-sink on 100 ports)"
# Registration r takes device dev-(r % 10) to destination port SINK_PORT + (r % 100):
# an event for one device matches 100 registrations over 10 destinations.
SINK=target/release/webhook-sink SINK_PORT=19000
register_all() {
  python3 - "$GW_PORT" "$SINK_PORT" <<'PY'
import json, sys, urllib.request
gw, base = sys.argv[1], int(sys.argv[2])
for r in range(1000):
    body = json.dumps({"device": f"dev-{r % 10}", "duration": "1h",
                       "destination": {"type": "http", "url": f"http://127.0.0.1:{base + r % 100}/hook"}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{gw}/api/registrations", body,
                                 {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
PY
}
start_sink() { # label, expected deliveries
  timeout 150 taskset -c 1 "$SINK" --base-port $SINK_PORT --ports 100 --expect "$2" --label "$1" --max-time 120 >> "$RESULTS" &
  SINK_PID=$!
  sleep 0.3
}
FWD_EVENTS=5000
start_gateway --allow-destination-nets 127.0.0.1/32
register_all
start_sink "forward-1000x100 ratatoskr" $((FWD_EVENTS * 10))
run "forward-publisher ratatoskr" -n 1 --devices 10 -m $FWD_EVENTS --pid "$SERVER_PID" \
  --sub-url "http://127.0.0.1:$GW_PORT/events?device=dev-{i}" --pub-url "http://127.0.0.1:$GW_PORT/api/events?device=dev-{d}"
wait "$SINK_PID" || true
stop_server
# The same with the event log on (the redb store's default).
LOG_DIR=$(mktemp -d)
start_gateway --allow-destination-nets 127.0.0.1/32 --store redb --data-dir "$LOG_DIR"
register_all
start_sink "forward-1000x100-log ratatoskr" $((FWD_EVENTS * 10))
run "forward-publisher-log ratatoskr" -n 1 --devices 10 -m $FWD_EVENTS --pid "$SERVER_PID" \
  --sub-url "http://127.0.0.1:$GW_PORT/events?device=dev-{i}" --pub-url "http://127.0.0.1:$GW_PORT/api/events?device=dev-{d}"
wait "$SINK_PID" || true
stop_server
rm -rf "$LOG_DIR"

fi
if want 6; then
echo "== 6. SSE fan-out (5,000 subscribers) with and without those forwarders busy, alternated"
for round in 1 2 3; do
  for mode in plain forwarding; do
    start_gateway --allow-destination-nets 127.0.0.1/32
    if [ $mode = forwarding ]; then register_all; start_sink "sse-$mode-$round sink" 3000; fi
    run "sse-$mode-$round ratatoskr" -n 5000 --devices 10 -m 300 --pid "$SERVER_PID" \
      --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events?device=dev-{d}"
    if [ $mode = forwarding ]; then wait "$SINK_PID" || true; fi
    stop_server
  done
done

fi
if want 7; then
echo "== 7. one node on Redis (cluster mode) against the embedded mode, alternated"
if command -v redis-server >/dev/null; then
  REDIS_PORT=16379
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --logfile "" >/dev/null &
  REDIS_PID=$!
  sleep 0.3
  for round in 1 2; do
    for mode in embedded redis; do
      extra=()
      [ $mode = redis ] && extra=(--redis-url "redis://127.0.0.1:$REDIS_PORT/" --redis-prefix "bench$round$RANDOM")
      start_gateway "${extra[@]}"
      run "cluster-broadcast-5000 $mode" -n 5000 -m 300 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events"
      stop_server
      start_gateway "${extra[@]}"
      run "cluster-paced-1000 $mode" -n 1000 -m 200 --rate 20 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events"
      stop_server
      if command -v wrk >/dev/null; then
        start_gateway "${extra[@]}"; ingest "cluster-ingest $mode" "http://127.0.0.1:$GW_PORT/api/events"; stop_server
        start_gateway "${extra[@]}"; ingest "cluster-ingest-batch100 $mode" "http://127.0.0.1:$GW_PORT/api/events" "$OUT/batch.lua"; stop_server
      fi
    done
  done
  # Redis's own capacity on this machine: XADD, pipelined 16 deep.
  if command -v redis-benchmark >/dev/null; then
    rps=$(taskset -c 1 redis-benchmark -p $REDIS_PORT -n 200000 -P 16 -q XADD benchstream MAXLEN '~' 100000 '*' f vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv \
      | awk '{for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}')
    echo "{\"label\":\"redis-xadd pipelined\",\"ingest_per_s\":${rps:-0}}" >> "$RESULTS"
  fi
  kill $REDIS_PID 2>/dev/null || true; wait $REDIS_PID 2>/dev/null || true
else
  echo "redis-server not installed: cluster scenario skipped" >&2
fi

fi
if want 8; then
echo "== 8. three nodes on one Redis, 3,000 subscribers spread over them, events posted to all three"
# Two cores: this shows correctness (every event once, in order, on every
# node), not scaling. All nodes share CPU 0, as one server does elsewhere.
if command -v redis-server >/dev/null; then
  REDIS_PORT=16379
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --logfile "" >/dev/null &
  REDIS_PID=$!
  sleep 0.3
  NODE_PIDS=()
  start_nodes() { # count prefix
    NODE_PIDS=()
    for n in $(seq 0 $(($1 - 1))); do
      taskset -c 0 "$GATEWAY" --listen 127.0.0.1:$((GW_PORT + n)) --log warn --store memory \
        --redis-url "redis://127.0.0.1:$REDIS_PORT/" --redis-prefix "$2" & NODE_PIDS+=($!)
      wait_port $((GW_PORT + n))
    done
  }
  stop_nodes() { for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; NODE_PIDS=(); }
  node_urls() { # count path
    for n in $(seq 0 $(($1 - 1))); do printf -- "%s http://127.0.0.1:%s%s " "$3" $((GW_PORT + n)) "$2"; done
  }
  for round in 1 2; do
    for nodes in 1 3; do
      start_nodes $nodes "bench8-$round-$nodes-$RANDOM"
      # shellcheck disable=SC2046
      run "three-nodes-broadcast-3000 nodes=$nodes" -n 3000 -m 300 \
        $(node_urls $nodes /events --sub-url) $(node_urls $nodes /api/events --pub-url)
      stop_nodes
      start_nodes $nodes "bench8p-$round-$nodes-$RANDOM"
      # shellcheck disable=SC2046
      run "three-nodes-paced-3000 nodes=$nodes" -n 3000 -m 200 --rate 20 \
        $(node_urls $nodes /events --sub-url) $(node_urls $nodes /api/events --pub-url)
      stop_nodes
    done
  done
  kill $REDIS_PID 2>/dev/null || true; wait $REDIS_PID 2>/dev/null || true
else
  echo "redis-server not installed: three-node scenario skipped" >&2
fi

fi
if want 9; then
echo "== 9. idle memory per connection with ssebench idlemem, at 10,000 and 50,000 (or as many as the descriptor limit allows)"
if [ -n "$SSEBENCH" ]; then
  most=$(( $(ulimit -Hn) - 1000 ))
  for asked in 10000 50000; do
    n=$asked
    [ "$n" -le "$most" ] || n=$most
    start_gateway --max-connections $((n + 100))
    timeout 150 taskset -c 1 "$SSEBENCH" idlemem --url "http://127.0.0.1:$GW_PORT/events" -n $n --pid "$SERVER_PID" --max-time 120 2>/dev/null |
      python3 -c '
import json, sys
for line in sys.stdin:
    try: d = json.loads(line)
    except ValueError: continue
    per = (d["server_rss_idle_kb"] - d["server_rss_before_kb"]) * 1024 / max(d["connected"], 1)
    print(json.dumps({"label": "idlemem-%s ratatoskr" % sys.argv[1], "connected": d["connected"], "idle_bytes_per_connection": round(per)}))
' "$asked" >> "$RESULTS"
    stop_server
  done
fi

fi
if want 10; then
echo "== 10. one node on a three-primary Redis Cluster with --redis-partitions 1, 3 and 6, alternated: ingest, the busiest primary's share of Redis's CPU, and bytes read per event"
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v wrk >/dev/null; then
  RC_DIR="$PWD/$OUT/redis-cluster"; rm -rf "$RC_DIR"; mkdir -p "$RC_DIR"
  RC_PORTS=(17001 17002 17003); RC_PIDS=()
  for port in "${RC_PORTS[@]}"; do
    taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --logfile "$RC_DIR/$port.log" \
      --dir "$RC_DIR" --dbfilename "dump-$port.rdb" --cluster-enabled yes \
      --cluster-config-file "$RC_DIR/nodes-$port.conf" --cluster-node-timeout 1000 >/dev/null & RC_PIDS+=($!)
  done
  for port in "${RC_PORTS[@]}"; do
    for _ in $(seq 1 100); do [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
  done
  redis-cli --cluster create 127.0.0.1:17001 127.0.0.1:17002 127.0.0.1:17003 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do
    ok=1
    for port in "${RC_PORTS[@]}"; do redis-cli -p "$port" cluster info | grep -q cluster_state:ok || ok=0; done
    [ $ok = 1 ] && break; sleep 0.1
  done
  SEEDS="redis://127.0.0.1:17001,redis://127.0.0.1:17002"
  # Each request to another of 1,000 devices; each batch line too.
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = '"'"'%s'"'"'\nlocal n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, "/api/events?device=mac:" .. string.format("%%012x", n %% 1000))\nend\n' "$BODY" > "$OUT/post-devices.lua"
  python3 - "$OUT/batch-devices.lua" "$BODY" <<'PY'
import sys
lines = [sys.argv[2][:-1] + ',"device":"mac:%012x"}' % k for k in range(100)]
open(sys.argv[1], "w").write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/x-ndjson"\nwrk.body = [[' + "\n".join(lines) + "\n" + ']]\n')
PY
  redis_cpu() { for port in "${RC_PORTS[@]}"; do redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%s ", s}'; done; }
  gw_metric() { curl -fsS "http://127.0.0.1:$GW_PORT/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {printf "%d", s}'; }
  partition_ingest() { # label script events-per-request
    local cpu0 cpu1 bytes0 bytes1 ev0 ev1 rps
    cpu0=$(redis_cpu); bytes0=$(gw_metric ratatoskr_cluster_read_bytes); ev0=$(gw_metric ratatoskr_events_ingested)
    rps=$(timeout 30 taskset -c 1 wrk -t1 -c8 -d6s -s "$2" "http://127.0.0.1:$GW_PORT/api/events" | awk '/Requests\/sec/ {print $2}')
    sleep 0.5 # the reader catches up
    cpu1=$(redis_cpu); bytes1=$(gw_metric ratatoskr_cluster_read_bytes); ev1=$(gw_metric ratatoskr_events_ingested)
    python3 - "$1" "${rps:-0}" "$3" "$cpu0" "$cpu1" "$bytes0" "$bytes1" "$ev0" "$ev1" >> "$RESULTS" <<'PY'
import json, sys
label, rps, per = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
cpu = [b - a for a, b in zip(map(float, sys.argv[4].split()), map(float, sys.argv[5].split()))]
events = int(sys.argv[9]) - int(sys.argv[8])
read = int(sys.argv[7]) - int(sys.argv[6])
print(json.dumps({"label": label, "events_per_s": round(rps * per), "events": events,
                  "busiest_primary_share": round(max(cpu) / sum(cpu), 2) if sum(cpu) else None,
                  "busiest_primary_cpu_ms_per_1k": round(max(cpu) * 1e6 / events, 1) if events else None,
                  "read_bytes_per_event": round(read / events) if events else None}))
PY
  }
  for round in 1 2; do
    for parts in 1 3 6; do
      extra=(--redis-mode cluster --redis-url "$SEEDS" --redis-partitions "$parts" --redis-prefix "bench$round$parts$RANDOM")
      start_gateway "${extra[@]}"
      # One stream of every device, so that the node reads every partition
      # (a node reads only those its streams need).
      curl -sN "http://127.0.0.1:$GW_PORT/events" >/dev/null & RC_SUB=$!
      partition_ingest "partitions-ingest p$parts" "$OUT/post-devices.lua" 1
      partition_ingest "partitions-ingest-batch100 p$parts" "$OUT/batch-devices.lua" 100
      kill $RC_SUB 2>/dev/null || true; wait $RC_SUB 2>/dev/null || true
      # Then one stream of one device only: once the partitions it does not
      # need have lingered out (10 s), the node reads its device's alone.
      curl -sN "http://127.0.0.1:$GW_PORT/events?device=mac:000000000000" >/dev/null & RC_SUB=$!
      sleep 12
      partition_ingest "partitions-ingest-one-device p$parts" "$OUT/post-devices.lua" 1
      kill $RC_SUB 2>/dev/null || true; wait $RC_SUB 2>/dev/null || true
      stop_server
    done
  done
  for pid in "${RC_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${RC_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
else
  echo "redis-server, redis-cli or wrk not installed: Redis Cluster scenario skipped" >&2
fi

fi
python3 scripts/bench_report.py "$RESULTS" | tee "$OUT/report.md"
