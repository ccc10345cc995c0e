// A real EventSource client (the npm `eventsource` package, which follows
// the WHATWG spec) against the ratatoskr binary: receiving, named events,
// automatic reconnection with Last-Event-ID, and lastEventId resume.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { EventSource } from "eventsource";

const BIN = fileURLToPath(new URL("../../target/debug/ratatoskr", import.meta.url));
const running = new Set();
after(() => running.forEach((p) => p.kill("SIGKILL")));

/**
 * Starts the binary on `port` (0: the gateway picks one, so no port is
 * found free and raced for); resolves with the child and its port once it
 * logs that it listens. A restart asks for the port the first start got.
 */
function startGateway(port = 0, extra = []) {
  const child = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--log-format", "json", "--sse-retry", "200ms", "--store", "memory", ...extra], {
    stdio: ["ignore", "inherit", "pipe"],
  });
  running.add(child);
  child.on("exit", () => running.delete(child));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stderr }).on("line", (line) => {
      const entry = JSON.parse(line);
      if (entry.message === "listening") {
        resolve({ child, port: Number(entry.listen.split(":").pop()) });
      }
    });
    child.on("exit", (code) => reject(new Error(`gateway exited with ${code}`)));
  });
}

async function stopGateway({ child }) {
  const exited = new Promise((resolve) => child.on("exit", resolve));
  child.kill("SIGTERM");
  assert.equal(await exited, 0, "the gateway exits 0 on SIGTERM");
}

async function post(base, body, query = "") {
  const r = await fetch(`${base}/api/events${query}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 202);
  return (await r.json()).id;
}

/** Collects `message` events (and named ones) into a queue with a waiter. */
function collect(es, names = []) {
  const items = [];
  let wake = null;
  const push = (kind) => (e) => {
    items.push({ kind, data: e.data, id: e.lastEventId });
    if (wake) wake();
  };
  es.onmessage = push("message");
  for (const n of names) es.addEventListener(n, push(n));
  return async function next(timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    while (items.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("no event in time");
      await new Promise((r) => {
        wake = r;
        setTimeout(r, left);
      });
    }
    return items.shift();
  };
}

function opened(es) {
  return new Promise((resolve, reject) => {
    es.onopen = () => resolve();
    es.onerror = (e) => (es.readyState === EventSource.CLOSED ? reject(e) : undefined);
  });
}

test("an EventSource receives events with their ids, filtered by device", async () => {
  const gw = await startGateway();
  const { port } = gw;
  const base = `http://127.0.0.1:${port}`;
  const es = new EventSource(`${base}/events?device=sensor-1`);
  const next = collect(es);
  await opened(es);
  await post(base, { skip: true }, "?device=sensor-2");
  const id = await post(base, { msg: "data" }, "?device=sensor-1");
  const ev = await next();
  assert.equal(ev.kind, "message");
  assert.deepEqual(JSON.parse(ev.data), { msg: "data" });
  assert.equal(ev.id, id);
  es.close();
  await stopGateway(gw);
});

test("lastEventId in the URL resumes with exactly the missed events", async () => {
  const gw = await startGateway();
  const { port } = gw;
  const base = `http://127.0.0.1:${port}`;
  const first = await post(base, { n: 1 });
  await post(base, { n: 2 });
  await post(base, { n: 3 });
  const es = new EventSource(`${base}/events?lastEventId=${first}`);
  const next = collect(es);
  assert.deepEqual(JSON.parse((await next()).data), { n: 2 });
  assert.deepEqual(JSON.parse((await next()).data), { n: 3 });
  es.close();
  await stopGateway(gw);
});

test("after a restart the client reconnects by itself, sends Last-Event-ID and is told of the gap", async () => {
  let gw = await startGateway();
  const { port } = gw;
  const base = `http://127.0.0.1:${port}`;
  const es = new EventSource(`${base}/events`);
  const next = collect(es, ["shutdown", "gap"]);
  await opened(es);
  const id = await post(base, { before: "restart" });
  assert.equal((await next()).id, id);
  await stopGateway(gw);
  assert.equal((await next()).kind, "shutdown");
  gw = await startGateway(port);
  const gap = await next(10000);
  assert.equal(gap.kind, "gap");
  assert.equal(JSON.parse(gap.data).last_event_id, id, "the client sent its Last-Event-ID");
  const after = await post(base, { after: "restart" });
  const ev = await next();
  assert.equal(ev.id, after);
  assert.ok(after > id, "ids keep increasing across restarts");
  es.close();
  await stopGateway(gw);
});
