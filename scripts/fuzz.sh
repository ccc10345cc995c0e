#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS seconds each (default 60)
# and prints the executions each made. Corpora live in fuzz/corpus/
# (not committed), seeded from fuzz/seeds/, the WRP test vectors and the
# shared WRP vectors. A crash, a panic, one allocation over 1 MiB (the
# default body limit; FUZZ_MALLOC_MB) or an RSS over 2 GiB fails the run;
# the input is kept in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-}

# cargo-fuzz needs a nightly toolchain (for the sanitizer flags); one is
# installed on the project's machines, a download is the fallback.
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet

seed() { # target, files...
  local dir="fuzz/corpus/$1"; shift
  mkdir -p "$dir"
  for f in "$@"; do [ -f "$f" ] && cp -n "$f" "$dir/" || true; done
}
VECTORS=(tests/vectors/wrp ../shared/protocols/wrp-vectors)
for d in "${VECTORS[@]}"; do
  [ -d "$d" ] || continue
  seed wrp_msgpack "$d"/*.msgpack
  seed wrp_json "$d"/*.json
done
for d in fuzz/seeds/*/; do
  seed "$(basename "$d")" "$d"*
done

cargo +nightly fuzz build -O
[ -n "$TARGETS" ] || TARGETS=$(cargo +nightly fuzz list)
printf '%-20s %12s %10s\n' target execs exec/s
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t" fuzz/logs
  if ! cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECS" -malloc_limit_mb=${FUZZ_MALLOC_MB:-1} -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1; then
    echo "fuzz target $t failed:"; tail -40 "fuzz/logs/$t.log"; exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo 0)
  printf '%-20s %12s %10s\n' "$t" "$execs" "$((execs / SECS))"
done
