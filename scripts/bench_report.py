#!/usr/bin/env python3
"""Turns bench-results/results.jsonl into a Markdown report with ratios
against the baselines measured in the same run."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r["label"]: r for r in rows}


def get(label, key):
    r = by.get(label)
    return None if r is None else r.get(key)


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = round(v, 1) if abs(v) < 100 else round(v)
    return f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"


def ratio(a, b):
    return "n/a" if not a or not b else f"{a / b:.2f}x"


print("| scenario | server | deliveries/s | p50 ms | p99 ms | idle B/conn | missing | dup |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if "deliveries_per_s" in r:
        scen, server = r["label"].split(" ", 1)
        print(f"| {scen} | {server} | {fmt(r['deliveries_per_s'])} | {fmt(r['latency_ms_p50'])} | {fmt(r['latency_ms_p99'])} "
              f"| {fmt(r.get('idle_bytes_per_connection'))} | {r['missing']} | {r['duplicates']} |")
print()
print("| target | measured |")
print("|---|---|")
for n in (5000, 10000):
    g, x, f = (get(f"broadcast-{n} {s}", "deliveries_per_s") for s in ("ratatoskr", "nchan", "roofline"))
    print(f"| broadcast {n}: >= 10x nchan | {ratio(g, x)} of nchan, {ratio(g, f)} of roofline |")
    idle = get(f"broadcast-{n} ratatoskr", "idle_bytes_per_connection")
    print(f"| idle RSS <= 4 KB/conn at {n} | {fmt(idle, ' B')} (nchan {fmt(get(f'broadcast-{n} nchan', 'idle_bytes_per_connection'), ' B')}) |")
c100, c10k = get("devices-100 ratatoskr", "server_cpu_us_per_event"), get("devices-10000 ratatoskr", "server_cpu_us_per_event")
print(f"| device fan-out flat: CPU us/event at 100 vs 10,000 subscribers | {fmt(c100)} vs {fmt(c10k)} ({ratio(c10k, c100)}) |")
paced = [(get(f"paced-1000-{i} ratatoskr", "latency_ms_p99"), get(f"paced-1000-{i} roofline", "latency_ms_p99")) for i in (1, 2, 3)]
paced = [(g, r) for g, r in paced if g and r]
if paced:
    ratios = sorted(g / r for g, r in paced)
    runs = ", ".join(f"{fmt(g)} vs {fmt(r)} ms" for g, r in paced)
    print(f"| unsaturated p99 <= 1.2x roofline | median of {len(paced)} rounds {ratios[len(ratios) // 2]:.2f}x ({runs}) |")
else:
    print("| unsaturated p99 <= 1.2x roofline | n/a |")
ig, ix, ir = (get(f"ingest {s}", "ingest_per_s") for s in ("ratatoskr", "nchan", "roofline"))
print(f"| ingest >= 1.0x nchan | {fmt(ig)}/s vs {fmt(ix)}/s ({ratio(ig, ix)}; roofline {fmt(ir)}/s) |")
mem = [get(f"ingest-memory-{i} ratatoskr", "ingest_per_s") for i in (1, 2)]
log = [get(f"ingest-log-{i} ratatoskr", "ingest_per_s") for i in (1, 2)]
if all(mem) and all(log):
    print(f"| ingest with the event log >= 0.9x without (--store memory) | {', '.join(fmt(x) for x in log)}/s vs "
          f"{', '.join(fmt(x) for x in mem)}/s ({ratio(sum(log), sum(mem))}) |")
ib = get("ingest-batch100 ratatoskr", "ingest_per_s")
if ib:
    print(f"| ingest, NDJSON batches of 100 | {fmt(ib * 100)} events/s ({fmt(ib)} POST/s) |")
for n in (10000, 50000):
    r = by.get(f"idlemem-{n} ratatoskr")
    if r:
        print(f"| idle RSS <= 4 KB/conn, ssebench idlemem at {n:,} | {fmt(r['idle_bytes_per_connection'], ' B')} with {r['connected']:,} connections |")
lost = sum(r.get("missing", 0) + r.get("duplicates", 0) for l, r in by.items() if l.endswith("ratatoskr") and "missing" in r)
print(f"| no loss for subscribers that keep up | {lost} missing+duplicate deliveries across all Ratatoskr runs |")
for suffix, what in (("", ""), ("-log", ", with the event log")):
    fw = by.get(f"forward-1000x100{suffix} ratatoskr")
    if fw:
        print(f"| forwarding, 1,000 registrations over 100 webhook destinations{what} | {fmt(fw['webhook_per_s'])} webhook deliveries/s "
              f"({fmt(fw['webhook_deliveries'])} delivered of {fmt(get(f'forward-publisher{suffix} ratatoskr', 'posted') or 0)} events x 10), "
              f"latency p50 {fmt(fw['webhook_latency_ms_p50'])} ms, p99 {fmt(fw['webhook_latency_ms_p99'])} ms |")
rounds = (1, 2, 3)
plain = [get(f"sse-plain-{i} ratatoskr", "deliveries_per_s") for i in rounds]
fwd = [get(f"sse-forwarding-{i} ratatoskr", "deliveries_per_s") for i in rounds]
if all(plain) and all(fwd):
    med_p, med_f = sorted(plain)[1], sorted(fwd)[1]
    sinks = [get(f"sse-forwarding-{i} sink", "webhook_deliveries") for i in rounds]
    print(f"| SSE fan-out with forwarders busy >= 0.9x without | median {fmt(med_f)} vs {fmt(med_p)} deliveries/s ({ratio(med_f, med_p)}), "
          f"best {ratio(max(fwd), max(plain))}; runs {', '.join(fmt(v) for v in fwd)} vs {', '.join(fmt(v) for v in plain)}; "
          f"webhooks delivered {', '.join(fmt(v) for v in sinks)} |")


# The hub's lock hold per publish (scenario 1), and the ceiling it sets.
holds = [(n, by.get(f"lock-{n}")) for n in (1000, 5000, 10000)]
if any(h for _, h in holds):
    print()
    print("| subscribers | publishes | lock hold per publish, mean | p99 (bucket bound) | per subscriber | deliveries/s the lock allows |")
    print("|---|---|---|---|---|---|")
    for n, h in holds:
        if not h or not h.get("hold_us_mean"):
            continue
        per_ns = h["hold_us_mean"] * 1000 / n
        print(f"| {n:,} | {h['publishes']:,} | {fmt(h['hold_us_mean'])} us | {fmt(h['hold_us_p99_bucket'])} us | {per_ns:.0f} ns | {fmt(round(n / h['hold_us_mean'] * 1e6))} |")

# Scenario 7: one node on Redis against the embedded mode, same run.
# Labels repeat across rounds: read every row, not the last one per label.
cl = [(r["label"], r) for r in rows if r["label"].startswith("cluster-")]
if cl:
    print()
    print("| cluster measure | embedded | Redis | ratio | goal |")
    print("|---|---|---|---|---|")

    def both(scen, key):
        return [[r[key] for l, r in cl if l == f"{scen} {m}" and key in r] for m in ("embedded", "redis")]

    def median(vs):
        return sorted(vs)[len(vs) // 2] if vs else None

    for scen, key, name, goal, diff in (
        ("cluster-broadcast-5000", "deliveries_per_s", "broadcast deliveries/s, 5,000 subscribers", ">= 0.8x", False),
        ("cluster-paced-1000", "latency_ms_p99", "p99 ms, 1,000 subscribers x 20 events/s", "<= +1 ms", True),
        ("cluster-ingest", "ingest_per_s", "ingest POST/s, wrk 8 connections", ">= 0.7x", False),
        ("cluster-ingest-batch100", "ingest_per_s", "NDJSON POST/s of 100 events, wrk 8 connections", "", False),
    ):
        e, r = both(scen, key)
        me, mr = median(e), median(r)
        rel = "n/a" if me is None or mr is None else (f"{mr - me:+.1f} ms" if diff else ratio(mr, me))
        print(f"| {name} | {', '.join(fmt(v) for v in e)} | {', '.join(fmt(v) for v in r)} | {rel} | {goal} |")
    x = get("redis-xadd pipelined", "ingest_per_s")
    if x:
        print(f"| Redis's own XADD/s (redis-benchmark, pipelined 16) | | {fmt(x)} | | |")

# Scenario 8: three nodes on one Redis.
three = [(r["label"], r) for r in rows if r["label"].startswith("three-nodes-")]
if three:
    print()
    print("| three nodes on one Redis | deliveries/s | p99 ms | missing | duplicates | out of order |")
    print("|---|---|---|---|---|---|")
    for l, r in three:
        print(f"| {l} | {fmt(r['deliveries_per_s'])} | {fmt(r['latency_ms_p99'])} | {r['missing']} | {r['duplicates']} | {r.get('out_of_order', 'n/a')} |")

# Scenario 10: one node on a three-primary Redis Cluster, 1, 3 and 6
# partitions, alternated (every round's figure shown; the median compared).
parts = [(r["label"], r) for r in rows if r["label"].startswith("partitions-")]
if parts:
    print()
    print("| Redis Cluster, 3 primaries | partitions | events/s | vs 1 partition | busiest primary's share of Redis CPU | its CPU ms per 1,000 events | bytes read per event |")
    print("|---|---|---|---|---|---|---|")

    def med(vs):
        vs = [v for v in vs if v is not None]
        return sorted(vs)[len(vs) // 2] if vs else None

    for scen in ("partitions-ingest", "partitions-ingest-batch100", "partitions-ingest-one-device"):
        base = med([r["events_per_s"] for l, r in parts if l == f"{scen} p1"])
        for p in (1, 3, 6):
            rs = [r for l, r in parts if l == f"{scen} p{p}"]
            if not rs:
                continue
            eps = med([r["events_per_s"] for r in rs])
            print(f"| {scen} | {p} | {', '.join(fmt(r['events_per_s']) for r in rs)} | {ratio(eps, base)} "
                  f"| {fmt(med([r['busiest_primary_share'] for r in rs]))} | {fmt(med([r['busiest_primary_cpu_ms_per_1k'] for r in rs]))} "
                  f"| {fmt(med([r['read_bytes_per_event'] for r in rs]))} |")
