#!/usr/bin/env python3
"""Runs the documented commands against a live gateway and checks what
they print against what the documentation says they print.

The commands are read from the documents themselves: every `sh` block of
each section listed in ON_DEFAULTS and REGISTRATIONS below (the README's
quick start, and the sections of docs/ that hold the other examples), so
an example that changes, or stops working, fails here, and so does a
listed section that is missing or holds no `sh` block. They run as
written, on the documents' own ports (8080 for the gateway, 9000 for the
sink): run.sh gives this script a network namespace of its own with only
a loopback, so those ports are free and nothing leaves the machine.

What is checked, per command:
- a `# 202 {...}` line after it, or a `# 200 {...}` comment on it: that
  status, and a JSON body of the same shape (the same keys, recursively,
  and values of the same JSON types; ids and times differ run to run);
- `# 201, Location: ...`: that status and a Location header;
- `curl -N` (a stream): status 200 and an SSE stream that opens with
  `retry:`;
- `# the sink prints: {...}`: a line of the sink's output with that shape;
- every other command: that curl exits 0 with a 2xx answer.
Commands with placeholders (`<id>`, `...`) and `xdg-open` are not run;
`cargo run --release -- ARGS` runs the binary under test with ARGS.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("BIN", "target/debug/ratatoskr")
# Answers and logs of this run (never shared with another run).
WORK = tempfile.mkdtemp(prefix="readme-examples-")
BODY, HEAD = os.path.join(WORK, "body"), os.path.join(WORK, "head")
SINK_LOG, GATEWAY_LOG = os.path.join(WORK, "sink.log"), os.path.join(WORK, "gateway.log")
# Where the examples are: (file, heading line) pairs, each section read up
# to the next heading of any level. The first group runs on one gateway on
# its defaults (the README's first command); the second is the
# registration walk-through, which starts its own gateway and the sink.
ON_DEFAULTS = (
    # The quick start.
    ("README.md", "## Use it"),
    # The opening of the usage reference (up to its first subsection).
    ("docs/usage.md", "# Use it"),
)
REGISTRATIONS = (("docs/forwarding.md", "# Forward events: registrations"),)


def section(path, title):
    """The text of `path` under the heading line `title`, up to the next
    heading of any level."""
    lines = open(path, encoding="utf-8").read().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == title]
    if not starts:
        raise SystemExit(f"{path} has no heading {title!r}: where did its examples go?")
    out, fenced = [], False
    # Outside code blocks only: there `# ...` is a shell comment.
    for line in lines[starts[0] + 1:]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            break
        out.append(line)
    return "".join(out)


def blocks(text):
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def commands(block):
    """(command, expectation comment) pairs: continuation lines joined, and
    the comment lines that follow a command (or end its line) kept."""
    out, lines, i = [], block.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        # A quoted JSON body may span lines ('{ ... }'): join until the
        # quotes balance, and `\` continuations.
        cmd = line
        while (cmd.rstrip().endswith("\\") or cmd.count("'") % 2 == 1) and i < len(lines):
            cmd = cmd + "\n" + lines[i]
            i += 1
        comment = ""
        m = re.search(r"\s#\s(.*)$", cmd.splitlines()[-1])
        if m and cmd.count("'") % 2 == 0 and "'" not in m.group(1)[:1]:
            comment = m.group(1)
            cmd = cmd[: cmd.rindex(m.group(0))]
        while i < len(lines) and lines[i].lstrip().startswith("#"):
            comment += "\n" + lines[i].lstrip()[1:].strip()
            i += 1
        out.append((cmd.strip(), comment.strip()))
    return out


def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    if isinstance(v, bool) or v is None:
        return type(v).__name__
    if isinstance(v, (int, float)):
        return "number"
    return "string"


def json_after(text, at):
    """The JSON value that starts in `text` at or after index `at`."""
    start = min(i for i in (text.find("{", at), text.find("[", at)) if i >= 0)
    return json.JSONDecoder().raw_decode(text[start:])[0]


failures, ran, skipped = [], 0, 0


# The section being run, named in failures.
where = ""


def fail(cmd, why):
    failures.append(f"{where}: {cmd.splitlines()[0][:100]}: {why}")


def curl(cmd, stream=False):
    """Runs a curl command line with its status and headers captured."""
    extra = f" -s -o {BODY} -D {HEAD} -w '%{{http_code}}'"
    if stream:
        extra += " --max-time 1"
    r = subprocess.run(cmd + extra, shell=True, capture_output=True, text=True, executable="/bin/bash")
    body = open(BODY, encoding="utf-8", errors="replace").read()
    head = open(HEAD, encoding="utf-8", errors="replace").read()
    return r.returncode, r.stdout.strip()[-3:], head, body


background = []


def start_background(cmd, log):
    args = shlex.split(cmd.rstrip("&").strip())
    if args[:4] == ["cargo", "run", "--release", "--"]:
        args = [BIN] + args[4:]
    if args[0] != BIN:
        return False
    if "sink" not in args:
        args += ["--store", "memory", "--log", "warn"]
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    background.append(p)
    port = 9000 if "sink" in args else 8080
    for _ in range(200):
        if subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0:
            return True
        time.sleep(0.05)
    raise SystemExit(f"{cmd}: nothing listens on {port}")


def run_section(path, title, gateway_started):
    global ran, skipped, where
    where = f"{path} {title!r}"
    found = blocks(section(path, title))
    if not found:
        fail(title, "no sh block: where did its examples go?")
    for block in found:
        for cmd, expect in commands(block):
            if cmd.startswith("xdg-open") or "<id>" in cmd or "..." in cmd:
                skipped += 1
                continue
            if cmd.endswith("&"):
                log = SINK_LOG if " sink " in cmd else GATEWAY_LOG
                if not start_background(cmd, log):
                    fail(cmd, "not a command this check can start")
                continue
            if not gateway_started():
                fail(cmd, "no gateway runs")
                continue
            ran += 1
            stream = " -N " in f" {cmd} "
            rc, status, head, body = curl(cmd, stream)
            if stream:
                if status != "200" or not body.startswith("retry:"):
                    fail(cmd, f"status {status}, stream starts {body[:30]!r}")
                continue
            if rc != 0:
                fail(cmd, f"curl exited {rc}")
                continue
            m = re.match(r"(\d{3})\b", expect)
            want = m.group(1) if m else None
            if want and status != want:
                fail(cmd, f"status {status}, the docs say {want}: {body[-300:]!r}")
                continue
            if not want and not status.startswith("2"):
                fail(cmd, f"status {status}")
                continue
            if want == "201" and "Location:" in expect and "location:" not in head.lower():
                fail(cmd, "no Location header")
            if want in ("200", "202") and expect[3:].lstrip().startswith(("{", "[")):
                try:
                    documented, got = json_after(expect, 3), json.loads(body)
                except ValueError as e:
                    fail(cmd, f"not JSON: {e}: {body[:80]!r}")
                    continue
                if shape(documented) != shape(got):
                    fail(cmd, f"body {body[:120]!r} is not shaped as the docs' {json.dumps(documented)[:120]}")
            if "the sink prints:" in expect:
                documented = json_after(expect, expect.index("the sink prints:"))
                got = None
                for _ in range(100):
                    lines = [l for l in open(SINK_LOG) if l.startswith("{")]
                    if lines:
                        got = json.loads(lines[-1])
                        break
                    time.sleep(0.05)
                if got is None:
                    fail(cmd, "the sink printed nothing")
                elif shape(documented) != shape(got):
                    fail(cmd, f"the sink printed {lines[-1][:160]!r}, not shaped as the docs'")
                elif got.get("signature_ok") != documented.get("signature_ok"):
                    fail(cmd, f"signatures: {got.get('signature_ok')}")


def main():
    # "Use it" assumes a gateway on its defaults: the README's first command.
    start_background("cargo run --release -- --listen 127.0.0.1:8080", GATEWAY_LOG)
    try:
        for path, title in ON_DEFAULTS:
            run_section(path, title, lambda: True)
        # The registration example starts its own gateway (with the sink's
        # address allowed): stop the first.
        first = background.pop()
        first.terminate()
        first.wait(timeout=30)
        for path, title in REGISTRATIONS:
            run_section(path, title, lambda: any(p.poll() is None for p in background))
    finally:
        for p in background:
            p.terminate()
    print(f"Documented examples: {ran} run, {skipped} not run (placeholders or a browser), {len(failures)} failed")
    for f in failures:
        print("  FAIL", f)
    return 1 if failures or ran == 0 else 0


sys.exit(main())
