#!/usr/bin/env bash
# Fails when Cargo.toml's rust-version is older than what a locked
# dependency declares it needs (the tree would not build with it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, re, sys
meta = json.load(sys.stdin)
def v(s):
    return tuple(int(x) for x in (s.split(".") + ["0", "0"])[:3])
ours = next(p for p in meta["packages"] if p["name"] == "ratatoskr")["rust_version"]
need = max(((p.get("rust_version") or "0", p["name"]) for p in meta["packages"] if p["name"] != "ratatoskr"), key=lambda t: v(t[0]))
print(f"rust-version {ours}; the locked tree needs {need[0]} ({need[1]})")
if v(ours) < v(need[0]):
    sys.exit(f"rust-version {ours} is older than {need[0]}, which {need[1]} needs")
'
