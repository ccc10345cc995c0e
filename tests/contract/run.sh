#!/usr/bin/env bash
# The OpenAPI contract, checked from outside: schemathesis (PyPI) against a
# live gateway, once with auth off and once with auth on (an admin token,
# then no token at all, which every operation must answer as documented).
# It fails on any 5xx and on any response that breaks /openapi.json
# (status code, content type, headers, body schema).
#
# Everything runs in a network namespace of its own that has only a
# loopback: the registration URLs schemathesis makes up are resolved by the
# gateway's SSRF guard, and those lookups must not leave the machine.
#
# GET /events is left out: a stream does not end, so a request to it only
# times out; the stream has its own black-box tests. The stateful phase is
# left out too (its inferred links join unrelated operations).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/debug/ratatoskr}
ST=${SCHEMATHESIS:-.venv/bin/schemathesis}
EXAMPLES=${CONTRACT_EXAMPLES:-50}
OUT=${CONTRACT_OUT:-artifacts/contract}

if [ -z "${IN_NETNS:-}" ]; then
  [ -x "$BIN" ] || { echo "build first: $BIN is missing" >&2; exit 1; }
  [ -x "$ST" ] || { echo "schemathesis is missing: make .venv/bin/moto_server" >&2; exit 1; }
  if ! unshare -rn true 2>/dev/null; then
    echo "cannot make a network namespace (unshare -rn): contract run skipped" >&2
    [ -z "${CI:-}" ] || exit 1
    exit 0
  fi
  exec unshare -rn env IN_NETNS=1 bash "$0" "$@"
fi

ip link set lo up 2>/dev/null || python3 - <<'PY'
# No `ip` command: bring the loopback up through an ioctl.
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ifr = struct.pack("16sH", b"lo", 0)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, ifr))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
PY
mkdir -p "$OUT"
TOKEN=contract-admin-token-0123456789

pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true' EXIT
start() { # gateway args...
  "$BIN" --store memory --listen 127.0.0.1:18181 --log warn \
    --allow-destination-nets 127.0.0.1/32 "$@" >"$OUT/gateway.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/18181) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "the gateway did not start" >&2
  cat "$OUT/gateway.log" >&2
  exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

failed=0
check() { # name, schemathesis args...
  local name=$1; shift
  echo "== contract: $name"
  if ! "$ST" run http://127.0.0.1:18181/openapi.json \
      --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
      --phases examples,coverage,fuzzing \
      --exclude-name "GET /events" \
      --max-examples "$EXAMPLES" --seed 20261130 \
      --request-timeout 10 --no-color --warnings off \
      --report-junit-path "$OUT/$name.xml" "$@" >"$OUT/$name.txt" 2>&1; then
    failed=1
  fi
  grep -E "Selected:|Tested:|generated|failed|Failures|Errors" "$OUT/$name.txt" | sed 's/^/  /' || true
  if grep -q "FAILURES\|ERRORS" "$OUT/$name.txt"; then
    sed -n '/FAILURES\|ERRORS/,$p' "$OUT/$name.txt" | head -80
  fi
}

start
check auth-off
stop

start --api-token "$TOKEN"
check auth-on-admin -H "Authorization: Bearer $TOKEN"
check auth-on-no-token
stop

exit $failed
