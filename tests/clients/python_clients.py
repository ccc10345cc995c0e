"""Third-party Python SSE clients against a live gateway, used as their
READMEs show: sseclient-py over requests and over urllib3, and httpx-sse.

Usage: python_clients.py http://127.0.0.1:PORT

For each client: subscribe, wait until the gateway counts the subscriber,
post two events, and require both within 2 s, byte-exact, with no empty
message in between (heartbeats and the opening retry: must not surface as
messages). Exits 1 on any failure, printing what each client saw.
"""

import json
import queue
import sys
import threading
import time
import urllib.request

BASE = sys.argv[1]
DEVICE = "mac:112233445566"


def subscribers():
    with urllib.request.urlopen(f"{BASE}/health") as r:
        return json.load(r)["subscribers"]


def publish(n):
    req = urllib.request.Request(
        f"{BASE}/api/events?device={DEVICE}&type=t",
        data=json.dumps({"n": n, "text": "é ✓"}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 202, r.status


def sseclient_requests(url, out):
    import requests
    import sseclient

    response = requests.get(url, stream=True, headers={"Accept": "text/event-stream"})
    client = sseclient.SSEClient(response)
    for event in client.events():
        out.put((event.event, event.data, event.id))


def sseclient_urllib3(url, out):
    import sseclient
    import urllib3

    http = urllib3.PoolManager()
    response = http.request(
        "GET", url, preload_content=False, headers={"Accept": "text/event-stream"}
    )
    client = sseclient.SSEClient(response)
    for event in client.events():
        out.put((event.event, event.data, event.id))


def httpx_sse(url, out):
    import httpx
    from httpx_sse import connect_sse

    with httpx.Client(timeout=None) as client:
        with connect_sse(client, "GET", url) as event_source:
            for sse in event_source.iter_sse():
                out.put((sse.event, sse.data, sse.id))


def check(name, run):
    out = queue.Queue()
    before = subscribers()
    url = f"{BASE}/events?device={DEVICE}"
    threading.Thread(target=run, args=(url, out), daemon=True).start()
    deadline = time.time() + 5
    while subscribers() <= before:
        if time.time() > deadline:
            return f"{name}: never subscribed"
        time.sleep(0.02)
    # Let a heartbeat or two pass first (the gateway runs with 1 s).
    time.sleep(1.5)
    sent = time.time()
    publish(1)
    publish(2)
    seen = []
    while len([s for s in seen if s[1]]) < 2:
        left = sent + 2 - time.time()
        if left <= 0:
            return f"{name}: only {seen} within 2 s"
        try:
            seen.append(out.get(timeout=left))
        except queue.Empty:
            return f"{name}: only {seen} within 2 s"
    took = time.time() - sent
    empty = [s for s in seen if not s[1]]
    if empty:
        return f"{name}: empty messages {empty}"
    datas = [json.loads(s[1]) for s in seen]
    if datas != [{"n": 1, "text": "é ✓"}, {"n": 2, "text": "é ✓"}]:
        return f"{name}: wrong events {datas}"
    if any(s[0] not in (None, "", "message") for s in seen):
        return f"{name}: named events {seen}"
    print(f"{name}: both events in {took * 1000:.1f} ms, ids {[s[2] for s in seen]}")
    return None


failures = [
    f
    for f in (
        check("sseclient-py over requests", sseclient_requests),
        check("sseclient-py over urllib3", sseclient_urllib3),
        check("httpx-sse", httpx_sse),
    )
    if f
]
for f in failures:
    print(f, file=sys.stderr)
sys.exit(1 if failures else 0)
