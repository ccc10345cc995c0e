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

cargo build --release -q -p ratatoskr --bin ratatoskr
cargo build --release -q -p ratatoskr-bench
BENCH=target/release/ratatoskr-bench
GATEWAY=target/release/ratatoskr
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

SERVER_PID=""
stop_server() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; SERVER_PID=""; }
cleanup() { stop_server || true; [ "$HAVE_NCHAN" = 1 ] && "$SHARED/peers/nchan.sh" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
start_gateway() { taskset -c 0 "$GATEWAY" --listen 127.0.0.1:$GW_PORT --log warn "$@" & SERVER_PID=$!; wait_port $GW_PORT; }
start_roofline() { taskset -c 0 "$SSEBENCH" roofline --listen 127.0.0.1:$ROOF_PORT >/dev/null 2>&1 & SERVER_PID=$!; sleep 0.3; }
run() { # label, then ratatoskr-bench arguments
  local label=$1; shift
  timeout 180 taskset -c 1 "$BENCH" --label "$label" --max-time 120 "$@" >> "$RESULTS"
}

echo "== 1. broadcast, 200-byte events as fast as accepted; idle RSS"
for n in 5000 10000; do
  start_gateway
  run "broadcast-$n ratatoskr" -n $n -m 300 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events"
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

echo "== 2. device fan-out: each subscriber on its own device, events to every device in turn"
for n in 100 10000; do
  start_gateway
  run "devices-$n ratatoskr" -n $n --devices $n -m 20000 --pid "$SERVER_PID" \
    --sub-url "http://127.0.0.1:$GW_PORT/events?device=dev-{i}" --pub-url "http://127.0.0.1:$GW_PORT/api/events?device=dev-{d}"
  stop_server
done

echo "== 3. 1,000 subscribers at 20 events/s (unsaturated latency)"
start_gateway
run "paced-1000 ratatoskr" -n 1000 -m 200 --rate 20 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$GW_PORT/events" --pub-url "http://127.0.0.1:$GW_PORT/api/events"
stop_server
if [ -n "$SSEBENCH" ]; then
  start_roofline
  run "paced-1000 roofline" -n 1000 -m 200 --rate 20 --pid "$SERVER_PID" --sub-url "http://127.0.0.1:$ROOF_PORT/events" --pub-url "http://127.0.0.1:$ROOF_PORT/pub"
  stop_server
fi

echo "== 4. ingest with no subscribers (wrk -t1 -c8 -d5s, 200-byte POST)"
if command -v wrk >/dev/null; then
  BODY='{"seq":1,"ts":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = '"'"'%s'"'"'\n' "$BODY" > "$OUT/post.lua"
  ingest() { # label url
    local rps; rps=$(timeout 30 taskset -c 1 wrk -t1 -c8 -d5s -s "$OUT/post.lua" "$2" | awk '/Requests\/sec/ {print $2}')
    echo "{\"label\":\"$1\",\"ingest_per_s\":${rps:-0}}" >> "$RESULTS"
  }
  start_gateway; ingest "ingest ratatoskr" "http://127.0.0.1:$GW_PORT/api/events"; stop_server
  if [ -n "$SSEBENCH" ]; then start_roofline; ingest "ingest roofline" "http://127.0.0.1:$ROOF_PORT/pub"; stop_server; fi
  if [ "$HAVE_NCHAN" = 1 ]; then
    "$SHARED/peers/nchan.sh" start 1 0 >/dev/null; ingest "ingest nchan" "http://127.0.0.1:$NCHAN_PORT/pub/bench"; "$SHARED/peers/nchan.sh" stop >/dev/null
  fi
else
  echo "wrk not installed: ingest scenario skipped" >&2
fi

python3 scripts/bench_report.py "$RESULTS" | tee "$OUT/report.md"
