// The dashboard in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against the real gateway binary on 127.0.0.1.
//
// Covers: events appear in the stream view; a device filter shows only that
// device; the detail panel; the send form; registrations created and
// deleted from the page; the page reconnects after the gateway restarts;
// a narrow window; a gateway that requires a token; a scoped token that
// sees only its devices and its accounts' devices. No JavaScript console
// errors (network errors are allowed only while the gateway is down).
// Screenshots go to artifacts/ for CI.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.RATATOSKR_BIN || path.join(ROOT, "target/debug/ratatoskr");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.join(ROOT, "artifacts");
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
];
const TOKEN = "browser-test-token-0123456789";

/**
 * Starts the binary on `port` (0: the gateway picks one, so no port is
 * found free and raced for) and resolves with the child and its port once
 * it logs that it listens; its warnings and errors go to stderr. A restart
 * asks for the port the first start got.
 */
async function startGateway(port = 0, extra = []) {
  const child = spawn(BIN, [
    "--listen", `127.0.0.1:${port}`, "--store", "memory", "--log-format", "json",
    "--allow-destination-nets", "127.0.0.1/32", "--sse-retry", "300ms", ...extra,
  ], { stdio: ["ignore", "ignore", "pipe"] });
  const listening = new Promise((resolve, reject) => {
    createInterface({ input: child.stderr }).on("line", (line) => {
      let entry;
      try { entry = JSON.parse(line); } catch { process.stderr.write(line + "\n"); return; }
      if (entry.message === "listening") resolve(Number(entry.listen.split(":").pop()));
      else if (entry.level === "WARN" || entry.level === "ERROR") process.stderr.write(line + "\n");
    });
    child.once("exit", (code) => reject(new Error(`gateway exited with ${code} before listening`)));
  });
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("gateway did not start in 10 s")), 10000).unref());
  const bound = await Promise.race([listening, timeout]);
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${bound}/ready`)).ok) return { child, port: bound };
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gateway on ${bound} did not become ready`);
}

async function stopGateway({ child }) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

async function publish(port, device, type, payload, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`http://127.0.0.1:${port}/api/events?device=${device}&type=${type}`, {
    method: "POST", headers, body: JSON.stringify(payload),
  });
  assert.equal(res.status, 202, await res.text());
}

let context;
let profile;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  profile = mkdtempSync(path.join(os.tmpdir(), "ratatoskr-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1280, height: 900 },
  });
});

after(async () => {
  await context?.close();
  rmSync(profile, { recursive: true, force: true });
});

/// Opens the page and records console errors, tagged with whether the test
/// made the gateway refuse or go away at the time (state.down): only then
/// are network-level errors expected.
async function open(port, state) {
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push({ text: m.text(), down: state.down }); });
  page.on("pageerror", (e) => errors.push({ text: `pageerror: ${e.message}`, down: false }));
  await page.goto(`http://127.0.0.1:${port}/`);
  return { page, errors };
}

function assertNoConsoleErrors(errors) {
  const expected = /ERR_CONNECTION_REFUSED|Failed to load resource|net::ERR|401|403|422|MIME type/;
  const real = errors.filter((e) => !(e.down && expected.test(e.text)));
  assert.deepEqual(real, [], "no console errors");
}

test("the dashboard streams, filters, registers, reconnects and fits a narrow window", async () => {
  let gateway = await startGateway();
  const { port } = gateway;
  const hooks = [];
  const receiver = createServer((req, res) => { hooks.push(req.url); res.writeHead(204).end(); });
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  const state = { down: false };
  const { page, errors } = await open(port, state);
  try {
    await page.locator("#conn", { hasText: "live" }).waitFor();
    await page.locator("#health", { hasText: /^healthy$/ }).waitFor();
    await page.locator("#ready", { hasText: /^ready$/ }).waitFor();

    // Events appear, newest first.
    await publish(port, "mac:112233445566", "online", { battery: 42, marker: "first" });
    await publish(port, "mac:aabbccddeeff", "offline", { marker: "second" });
    await page.locator("#events li", { hasText: "second" }).waitFor();
    const texts = await page.locator("#events li").allTextContents();
    assert.ok(texts[0].includes("second") && texts[1].includes("first"), texts.join("\n"));

    // Clicking an event shows its full envelope.
    await page.locator("#events li", { hasText: "first" }).click();
    const detail = JSON.parse(await page.locator("#detail").textContent());
    assert.equal(detail.device, "mac:112233445566");
    assert.equal(detail.type, "online");
    assert.deepEqual(detail.payload, { battery: 42, marker: "first" });

    // A device filter maps onto /events?device=: only that device shows.
    await page.fill("#f-device", "mac:aabbccddeeff");
    await page.click("#filters button[type=submit]");
    await page.locator("#conn", { hasText: "live" }).waitFor();
    await page.waitForFunction(() => document.querySelectorAll("#events li").length === 0);
    await publish(port, "mac:112233445566", "online", { marker: "filtered-out" });
    await publish(port, "mac:aabbccddeeff", "online", { marker: "kept" });
    await page.locator("#events li", { hasText: "kept" }).waitFor();
    const devices = await page.locator("#events li").evaluateAll((lis) => lis.map((li) => li.dataset.device));
    assert.deepEqual(devices, ["mac:aabbccddeeff"]);
    assert.equal(await page.locator("#events li", { hasText: "filtered-out" }).count(), 0);

    // Pause holds events back; resume shows them.
    await page.click("#pause");
    await publish(port, "mac:aabbccddeeff", "online", { marker: "while-paused" });
    await page.locator("#pending", { hasText: "1" }).waitFor();
    assert.equal(await page.locator("#events li", { hasText: "while-paused" }).count(), 0);
    await page.click("#pause");
    await page.locator("#events li", { hasText: "while-paused" }).waitFor();

    // The send form posts to /api/events and the event streams back.
    await page.fill("#send input[name=device]", "mac:aabbccddeeff");
    await page.fill("#send textarea[name=payload]", '{"marker":"from-the-form"}');
    await page.click("#send button[type=submit]");
    await page.locator("#send-result", { hasText: "Accepted as" }).waitFor();
    await page.locator("#events li", { hasText: "from-the-form" }).waitFor();

    // Registrations: create from the form, see it with a countdown, deliver, delete.
    const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;
    await page.fill("#register input[name=device]", "mac:aabbccddeeff");
    await page.fill("#register input[name=url]", hookUrl);
    await page.fill("#register input[name=duration]", "5m");
    await page.click("#register button[type=submit]");
    await page.locator("#register-result", { hasText: "Registered" }).waitFor();
    const row = page.locator("#regs tbody tr");
    await row.first().waitFor();
    const cells = await row.first().locator("td").allTextContents();
    assert.equal(cells[0], "mac:aabbccddeeff");
    assert.match(cells[1], /^http · 127\.0\.0\.1:\d+$/);
    assert.match(cells[2], /^[45]m \d\ds$/);
    await publish(port, "mac:aabbccddeeff", "online", { marker: "forwarded" });
    for (let i = 0; i < 100 && hooks.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(hooks, ["/hook"]);
    await page.locator("#regs tbody tr td:nth-child(4)", { hasText: "1" }).waitFor();
    await page.waitForFunction(() => document.querySelector("#s-forwarded").textContent === "1");
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard.png"), fullPage: true });
    // An invalid registration shows the gateway's reason (Chromium logs the 422).
    state.down = true;
    await page.fill("#register input[name=duration]", "2h");
    await page.click("#register button[type=submit]");
    await page.locator("#register-result", { hasText: "duration" }).waitFor();
    state.down = false;
    await row.first().locator("button").click();
    await page.waitForFunction(() => document.querySelectorAll("#regs tbody tr").length === 0);

    // Figures and the chart are fed from /api/stats.
    await page.waitForFunction(() => Number(document.querySelector("#s-in").textContent.replace(/,/g, "")) >= 6);
    await page.waitForFunction(() => document.querySelector("#s-registrations").textContent === "0");


    // Restart: the page says it is disconnected, then reconnects by itself.
    state.down = true;
    await stopGateway(gateway);
    await page.locator("#banner").waitFor({ state: "visible" });
    await page.locator("#health", { hasText: "unreachable" }).waitFor();
    gateway = await startGateway(port);
    await page.locator("#conn", { hasText: "live" }).waitFor({ timeout: 20000 });
    await page.locator("#ready", { hasText: /^ready$/ }).waitFor();
    await page.locator("#health", { hasText: /^healthy$/ }).waitFor();
    state.down = false;
    await page.locator("#banner").waitFor({ state: "hidden" });
    await publish(port, "mac:aabbccddeeff", "online", { marker: "after-restart" });
    await page.locator("#events li", { hasText: "after-restart" }).waitFor();

    // A narrow window: one column, nothing wider than the screen.
    await page.setViewportSize({ width: 380, height: 800 });
    await page.waitForTimeout(200);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a narrow window`);
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-narrow.png"), fullPage: true });
    assertNoConsoleErrors(errors);
  } finally {
    await page.close();
    await stopGateway(gateway);
    receiver.close();
  }
});

test("a gateway that requires a token makes the page ask for it", async () => {
  const gateway = await startGateway(0, ["--api-token", TOKEN]);
  const { port } = gateway;
  // Until the token is given, the gateway refuses the page's requests
  // (Chromium logs those loads as errors): "down" from the page's view.
  const state = { down: true };
  const { page, errors } = await open(port, state);
  try {
    await page.locator("#token-dialog").waitFor({ state: "visible" });
    await page.fill("#token", TOKEN);
    await page.click("#token-form button[type=submit]");
    await page.locator("#conn", { hasText: "live" }).waitFor();
    state.down = false;
    await publish(port, "mac:112233445566", "online", { marker: "with-token" }, TOKEN);
    await page.locator("#events li", { hasText: "with-token" }).waitFor();
    assertNoConsoleErrors(errors);
  } finally {
    await page.close();
    await stopGateway(gateway);
  }
});

/// An HS256 JSON Web Token, made the way any issuer would.
function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signed = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
}

test("a scoped token logs in and sees only its devices", async () => {
  const secret = "browser-jwt-secret-0123456789abcdef";
  const gateway = await startGateway(0, ["--jwt-secret", secret]);
  const { port } = gateway;
  const exp = Math.floor(Date.now() / 1000) + 600;
  const admin = jwt(secret, { sub: "ops", exp, ratatoskr: { admin: true } });
  const alice = jwt(secret, { sub: "alice", exp, ratatoskr: { subscribe: ["mac:112233445566"], accounts: ["acme"] } });
  const acme = await fetch(`http://127.0.0.1:${port}/api/accounts/acme/devices`, {
    method: "PUT", headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
    body: JSON.stringify({ devices: ["serial:acme-7"] }),
  });
  assert.equal(acme.status, 201);
  const state = { down: true };
  const { page, errors } = await open(port, state);
  try {
    await page.locator("#token-dialog").waitFor({ state: "visible" });
    await page.fill("#token", alice);
    await page.click("#token-form button[type=submit]");
    await page.locator("#conn", { hasText: "live" }).waitFor();
    state.down = false;
    const who = page.locator("#who");
    await who.waitFor({ state: "visible" });
    const text = await who.textContent();
    assert.match(text, /sub:alice/);
    assert.match(text, /devices: mac:112233445566/);
    assert.match(text, /accounts: acme/);
    await page.locator("#tp-note").waitFor({ state: "visible" });
    assert.equal(await page.locator(".figures").isHidden(), true, "no gateway-wide totals");

    await publish(port, "mac:665544332211", "t", { marker: "not-mine" }, admin);
    await publish(port, "mac:112233445566", "t", { marker: "mine" }, admin);
    await publish(port, "serial:acme-7", "t", { marker: "acme-device" }, admin);
    await page.locator("#events li", { hasText: "acme-device" }).waitFor();
    await page.locator("#events li", { hasText: "mine" }).first().waitFor();
    assert.equal(await page.locator("#events li", { hasText: "not-mine" }).count(), 0, "another device's event");
    // Asking the page for another device is refused by the gateway (and
    // Chromium logs the refused stream).
    state.down = true;
    await page.fill("#f-device", "mac:665544332211");
    await page.click("#filters button[type=submit]");
    await page.locator("#banner", { hasText: "may not subscribe to device mac:665544332211" }).waitFor();
    await page.locator("#conn", { hasText: "refused" }).waitFor();
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-scoped.png"), fullPage: true });
    // Signing out forgets the token and asks again.
    await page.click("#signout");
    await page.locator("#token-dialog").waitFor({ state: "visible" });
    assert.equal(await page.evaluate(() => sessionStorage.getItem("ratatoskr-token")), null);
    assertNoConsoleErrors(errors);
  } finally {
    await page.close();
    await stopGateway(gateway);
  }
});

test("a busy gateway does not freeze the tab; rows are keyboard reachable; focus survives redraws", async () => {
  const gateway = await startGateway(0);
  const { port } = gateway;
  const state = { down: false };
  const { page, errors } = await open(port, state);
  try {
    await page.locator("#conn", { hasText: "live" }).waitFor();
    // Count animation frames while 1,000 events/s arrive for 3 s.
    await page.evaluate(() => {
      window.__frames = 0;
      const tick = () => { window.__frames += 1; requestAnimationFrame(tick); };
      requestAnimationFrame(tick);
    });
    const started = Date.now();
    let sent = 0;
    for (let batch = 0; batch < 30; batch++) {
      const lines = [];
      for (let i = 0; i < 100; i++) lines.push(JSON.stringify({ n: sent + i, marker: "busy" }));
      const res = await fetch(`http://127.0.0.1:${port}/api/events?device=mac:112233445566&type=busy`, {
        method: "POST", headers: { "content-type": "application/x-ndjson" }, body: lines.join("\n"),
      });
      assert.equal(res.status, 202, await res.text());
      sent += 100;
      const due = started + (batch + 1) * 100;
      if (Date.now() < due) await new Promise((r) => setTimeout(r, due - Date.now()));
    }
    const seconds = (Date.now() - started) / 1000;
    await page.waitForFunction((n) => document.querySelector("#events li .what")?.textContent.includes(`"n":${n - 1}`), sent);
    const frames = await page.evaluate(() => window.__frames);
    const fps = frames / seconds;
    console.log(`dashboard: ${sent} events in ${seconds.toFixed(1)} s, ${fps.toFixed(0)} frames/s`);
    assert.ok(fps >= 20, `the tab kept drawing: ${fps.toFixed(1)} frames/s`);
    assert.equal(await page.locator("#events li").count(), 200, "at most 200 rows kept");
    assert.equal(await page.locator("#shown").textContent(), "200");

    // Keyboard: Tab reaches a row, Enter shows it, arrows move between rows.
    const first = page.locator("#events li").first();
    await first.focus();
    await page.keyboard.press("Enter");
    assert.equal(JSON.parse(await page.locator("#detail").textContent()).payload.n, sent - 1);
    await page.keyboard.press("ArrowDown");
    await page.keyboard.press(" ");
    assert.equal(JSON.parse(await page.locator("#detail").textContent()).payload.n, sent - 2);

    // Pausing keeps at most 200 pending events, and says how many it let go.
    await page.click("#pause");
    const lines = [];
    for (let i = 0; i < 300; i++) lines.push(JSON.stringify({ n: i, marker: "paused" }));
    await fetch(`http://127.0.0.1:${port}/api/events?device=mac:112233445566&type=busy`, {
      method: "POST", headers: { "content-type": "application/x-ndjson" }, body: lines.join("\n"),
    });
    await page.locator("#pending", { hasText: "200 (100 older not kept)" }).waitFor();
    await page.click("#pause");
    await page.locator("#events li .what", { hasText: '"n":299' }).first().waitFor();

    // The registrations table is updated in place: a focused button keeps
    // its focus across the once-a-second redraw and the 3 s poll.
    const reg = await fetch(`http://127.0.0.1:${port}/api/registrations`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ device: "mac:112233445566", duration: "5m",
        destination: { type: "http", url: "http://127.0.0.1:9/x" } }),
    });
    assert.equal(reg.status, 201);
    const button = page.locator("#regs tbody tr button").first();
    await button.waitFor();
    await button.focus();
    await page.waitForTimeout(3500);
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("aria-label")?.startsWith("Delete registration")), true);
    assertNoConsoleErrors(errors);
  } finally {
    await page.close();
    await stopGateway(gateway);
  }
});
