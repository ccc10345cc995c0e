#!/usr/bin/env bash
# The examples of the README and docs/, run as written against a live
# gateway (check_examples.py says which, and what is compared). They use
# the documents' own ports, 8080 and 9000: everything runs in a network
# namespace of its own with only a loopback, so those ports are free here
# whatever else runs, and nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
export BIN=${BIN:-target/debug/ratatoskr}

if [ -z "${IN_NETNS:-}" ]; then
  [ -x "$BIN" ] || { echo "build first: $BIN is missing" >&2; exit 1; }
  if ! unshare -rn true 2>/dev/null; then
    echo "cannot make a network namespace (unshare -rn): documented examples skipped" >&2
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
exec python3 tests/readme/check_examples.py
