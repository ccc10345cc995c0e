// Ratatoskr operator dashboard: plain ES module, no build step.
// Everything the page shows comes from the gateway's own API: the SSE
// stream (/events?format=envelope), /api/stats, /health, /ready and
// /api/registrations. Text from events is only ever set with textContent,
// so an event cannot inject markup into the page.

const $ = (sel) => document.querySelector(sel);
const MAX_EVENTS = 200;
const HISTORY = 300; // seconds of throughput kept for the chart

const state = {
  token: sessionStorage.getItem("ratatoskr-token") || "",
  es: null,
  lastId: "",
  paused: false,
  // Events received but not yet drawn: drawn once per animation frame, so
  // a busy gateway (thousands of events/s) costs the tab one DOM update a
  // frame. While paused, only the newest MAX_EVENTS are kept.
  pending: [],
  pendingDropped: 0,
  frame: 0,
  notices: 0,
  selected: null,
  reconnectTimer: null,
  retryMs: 1000,
  prev: null,
  history: [],
  registrations: [],
  role: "",
};

// ---- API access (with an optional bearer token) ----------------------------

let asking = null;
function askToken() {
  if (asking) return asking;
  const dialog = $("#token-dialog");
  asking = new Promise((resolve) => {
    $("#token-form").addEventListener("submit", () => {
      state.token = $("#token").value.trim();
      sessionStorage.setItem("ratatoskr-token", state.token);
      asking = null;
      resolve();
      connect();
      whoami();
    }, { once: true });
  });
  if (!dialog.open) dialog.showModal();
  return asking;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401) {
    askToken();
    throw new Error("a token is required");
  }
  return res;
}

// Who the token is, and what it may see: shown in the header. A scoped
// token's stream, registrations and sends are cut to its scope by the
// gateway; the page only says so.
async function whoami() {
  const who = $("#who");
  try {
    const res = await api("/api/whoami");
    if (!res.ok) return;
    const me = await res.json();
    state.role = me.role;
    $("#signout").hidden = me.role === "anyone";
    if (me.role === "anyone") {
      who.hidden = true;
      return;
    }
    const parts = [];
    if (me.role === "admin") parts.push("admin");
    if (me.owner) parts.push(me.owner);
    if (me.subscribe?.length) parts.push(`devices: ${me.subscribe.join(", ")}`);
    if (me.accounts?.length) parts.push(`accounts: ${me.accounts.join(", ")}`);
    if (me.role === "scoped" && !me.subscribe?.length && !me.accounts?.length) parts.push("no devices to watch");
    who.textContent = parts.join(" · ");
    who.hidden = false;
  } catch {
    // A 401 opens the token dialog.
  }
}

$("#signout").addEventListener("click", () => {
  sessionStorage.removeItem("ratatoskr-token");
  state.token = "";
  if (state.es) state.es.close();
  location.reload();
});

async function problem(res) {
  try {
    const body = await res.json();
    const errors = (body.errors || []).map((e) => `${e.field || e.path}: ${e.message}`);
    return [body.detail || body.message || res.statusText, ...errors].join(" · ");
  } catch {
    return `${res.status} ${res.statusText}`;
  }
}

// ---- The live stream --------------------------------------------------------

function streamUrl() {
  const q = new URLSearchParams({ format: "envelope" });
  for (const d of $("#f-device").value.split(",").map((s) => s.trim()).filter(Boolean)) q.append("device", d);
  for (const t of $("#f-type").value.split(",").map((s) => s.trim()).filter(Boolean)) q.append("type", t);
  if (state.lastId) q.set("lastEventId", state.lastId);
  if (state.token) q.set("access_token", state.token);
  return `/events?${q}`;
}

function setConnection(ok, text) {
  const c = $("#conn");
  c.textContent = text;
  c.className = `badge ${ok ? "ok" : "bad"}`;
  const banner = $("#banner");
  banner.hidden = ok;
  if (!ok) banner.textContent = `Disconnected from the event stream (${text}); reconnecting by itself…`;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  if (state.es) state.es.close();
  // Not "live" until this stream opens: events published before then are
  // not in it (a new filter starts from now).
  const c = $("#conn");
  c.textContent = "connecting…";
  c.className = "badge";
  const es = new EventSource(streamUrl());
  state.es = es;
  es.onopen = () => {
    state.retryMs = 1000;
    setConnection(true, "live");
  };
  es.onmessage = (m) => {
    state.lastId = m.lastEventId || state.lastId;
    let envelope;
    try {
      envelope = JSON.parse(m.data);
    } catch {
      envelope = { id: m.lastEventId, payload: m.data };
    }
    queue(envelope);
  };
  es.addEventListener("lagged", (m) => {
    let policy = "disconnect";
    try {
      policy = JSON.parse(m.data).policy || policy;
    } catch {}
    notice(policy === "resume"
      ? "This page fell behind: the gateway skipped some events for it and carries on with newer ones."
      : "This page fell behind; it reconnects and the gateway resends from the last event seen.");
  });
  es.addEventListener("gap", () => notice("Some events are older than the gateway keeps and may be missing."));
  es.addEventListener("shutdown", () => setConnection(false, "gateway restarting"));
  es.onerror = () => {
    if (es !== state.es) return;
    setConnection(false, "disconnected");
    // The browser retries by itself unless it gave up (CLOSED); then we do,
    // with backoff, resuming after the last event seen.
    // While the token dialog is open, its submission reconnects.
    if (es.readyState === EventSource.CLOSED && !asking) {
      refusal().then((why) => {
        if (es !== state.es) return;
        if (why) {
          // A filter the gateway refuses (outside the token's scope, or
          // malformed): say why, and wait for a new filter.
          setConnection(false, "refused");
          $("#banner").textContent = `The gateway refused this stream: ${why}`;
          return;
        }
        state.reconnectTimer = setTimeout(connect, state.retryMs);
        state.retryMs = Math.min(state.retryMs * 2, 15000);
      });
    }
  };
}

// Why the stream was refused, if it was (EventSource cannot say): asks
// once, and lets go of the answer at once if it is a stream after all.
async function refusal() {
  const ctrl = new AbortController();
  try {
    const res = await fetch(streamUrl(), { signal: ctrl.signal, headers: { Accept: "text/event-stream" } });
    if (res.status === 400 || res.status === 403) return await problem(res);
  } catch {
    // Down: the reconnect loop goes on.
  } finally {
    ctrl.abort();
  }
  return null;
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.setAttribute("role", "status");
  li.textContent = text;
  $("#events").prepend(li);
  state.notices += 1;
  trim($("#events"));
}

function queue(envelope) {
  state.pending.push(envelope);
  if (state.pending.length > MAX_EVENTS) {
    state.pendingDropped += state.pending.length - MAX_EVENTS;
    state.pending.splice(0, state.pending.length - MAX_EVENTS);
  }
  if (state.paused) {
    showPending();
  } else if (!state.frame) {
    state.frame = requestAnimationFrame(flush);
  }
}

function showPending() {
  $("#pending").textContent = state.pendingDropped
    ? `${state.pending.length} (${fmt(state.pendingDropped)} older not kept)`
    : String(state.pending.length);
}

// Draws every pending event at once, newest first, in one DOM insertion.
function flush() {
  state.frame = 0;
  if (!state.pending.length) return;
  const list = $("#events");
  const batch = document.createDocumentFragment();
  for (let i = state.pending.length - 1; i >= 0; i--) batch.append(row(state.pending[i]));
  state.pending = [];
  state.pendingDropped = 0;
  list.prepend(batch);
  trim(list);
  $("#pending").textContent = "0";
}

function trim(list) {
  while (list.children.length > MAX_EVENTS) {
    if (list.lastElementChild.classList.contains("notice")) state.notices -= 1;
    list.lastElementChild.remove();
  }
  $("#shown").textContent = list.children.length - state.notices;
}

function select(li, envelope) {
  state.selected?.removeAttribute("aria-current");
  state.selected?.classList.remove("selected");
  li.classList.add("selected");
  li.setAttribute("aria-current", "true");
  state.selected = li;
  $("#detail").textContent = JSON.stringify(envelope, null, 2);
}

function row(envelope) {
  const li = document.createElement("li");
  li.dataset.device = envelope.device || "";
  li.dataset.type = envelope.type || "";
  // Reachable and usable by keyboard: Tab to a row, Enter or Space shows it.
  li.tabIndex = 0;
  const time = document.createElement("span");
  time.textContent = (envelope.received_at || "").slice(11, 23) || "–";
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = envelope.id || "";
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = `${envelope.type || "(no type)"} · ${envelope.device || "(no device)"} · ${JSON.stringify(envelope.payload)}`;
  li.append(time, id, what);
  li.addEventListener("click", () => select(li, envelope));
  li.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      select(li, envelope);
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const next = e.key === "ArrowDown" ? li.nextElementSibling : li.previousElementSibling;
      next?.focus();
    }
  });
  return li;
}

$("#filters").addEventListener("submit", (e) => {
  e.preventDefault();
  // A new filter is a new stream: start from now, with an empty list.
  state.lastId = "";
  state.pending = [];
  state.pendingDropped = 0;
  state.notices = 0;
  $("#events").replaceChildren();
  $("#shown").textContent = "0";
  $("#pending").textContent = "0";
  connect();
});

$("#pause").addEventListener("click", () => {
  state.paused = !state.paused;
  const b = $("#pause");
  b.setAttribute("aria-pressed", String(state.paused));
  b.textContent = state.paused ? "Resume" : "Pause";
  if (!state.paused) flush();
});

// ---- Figures, chart, health -------------------------------------------------

const fmt = (n) => (n === undefined || n === null ? "–" : Number(n).toLocaleString("en"));

async function pollStats() {
  try {
    // A scoped token sees its own devices, not the gateway's totals.
    const scoped = state.role === "scoped";
    $("#tp-note").hidden = !scoped;
    $(".figures").hidden = scoped;
    $("#chart").hidden = scoped;
    $(".legend").hidden = scoped;
    if (scoped) return;
    const res = await api("/api/stats");
    if (!res.ok) return;
    const s = await res.json();
    const t = s.totals;
    $("#s-subscribers").textContent = fmt(t.subscribers);
    $("#s-in").textContent = fmt(t.events_ingested);
    $("#s-out").textContent = fmt(t.deliveries);
    $("#s-dropped").textContent = fmt(t.deliveries_dropped);
    $("#s-lagged").textContent = fmt(t.subscribers_lagged);
    $("#s-registrations").textContent = fmt(s.registrations);
    $("#s-forwarded").textContent = fmt(s.forwarding?.delivered);
    $("#s-fwd-dropped").textContent = fmt(s.forwarding?.dropped);
    drawCluster(s.cluster);
    const now = performance.now();
    const out = t.deliveries + (s.forwarding?.delivered || 0);
    if (state.prev && now > state.prev.at) {
      const dt = (now - state.prev.at) / 1000;
      state.history.push({
        in: Math.max(0, (t.events_ingested - state.prev.in) / dt),
        out: Math.max(0, (out - state.prev.out) / dt),
      });
      if (state.history.length > HISTORY) state.history.shift();
      draw();
    }
    state.prev = { at: now, in: t.events_ingested, out };
  } catch {
    // Health polling reports the outage.
  }
}

// Cluster mode only: the live members, as each announces itself.
function drawCluster(cluster) {
  const section = $("#cluster");
  section.hidden = !cluster;
  if (!cluster) return;
  $("#cluster-node").textContent =
    `This page is served by node ${cluster.node.slice(0, 8)}; Redis ${cluster.healthy ? "reachable" : "unreachable"}.`;
  const rows = (cluster.members || []).map((m) => {
    const tr = document.createElement("tr");
    for (const text of [m.node.slice(0, 8), m.address, fmt(m.subscribers), m.forwarding ? `yes (${fmt(m.destinations)} destinations)` : "no"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  $("#members tbody").replaceChildren(...rows);
}

function draw() {
  const canvas = $("#chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600;
  const h = canvas.clientHeight || 180;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 44, r: 6, t: 8, b: 16 };
  const max = Math.max(1, ...state.history.flatMap((p) => [p.in, p.out]));
  const x = (i) => pad.l + (i / (HISTORY - 1)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#dde1e7";
  ctx.fillStyle = "#5b6575";
  ctx.font = "10px system-ui";
  for (const f of [0, 0.5, 1]) {
    ctx.beginPath();
    ctx.moveTo(pad.l, y(max * f));
    ctx.lineTo(w - pad.r, y(max * f));
    ctx.stroke();
    ctx.fillText(fmt(Math.round(max * f)), 2, y(max * f) + 3);
  }
  ctx.fillText(`last ${HISTORY / 60} min`, pad.l, h - 3);
  const offset = HISTORY - state.history.length;
  for (const [key, color] of [["in", "#2563eb"], ["out", "#d97706"]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    state.history.forEach((p, i) => (i ? ctx.lineTo(x(i + offset), y(p[key])) : ctx.moveTo(x(i + offset), y(p[key]))));
    ctx.stroke();
  }
}

function badge(el, ok, text) {
  el.textContent = text;
  el.className = `badge ${ok ? "ok" : "bad"}`;
}

async function pollHealth() {
  try {
    const h = await fetch("/health");
    badge($("#health"), h.ok, h.ok ? "healthy" : `health ${h.status}`);
  } catch {
    badge($("#health"), false, "unreachable");
  }
  try {
    const r = await fetch("/ready");
    badge($("#ready"), r.ok, r.ok ? "ready" : "not ready");
  } catch {
    badge($("#ready"), false, "not ready");
  }
}

// ---- Registrations ----------------------------------------------------------

async function pollRegistrations() {
  try {
    const res = await api("/api/registrations?limit=100");
    if (!res.ok) return;
    state.registrations = (await res.json()).items;
    drawRegistrations();
  } catch {
    // Shown as disconnected by the health badges.
  }
}

function destinationText(d) {
  const url = d.url || d.queue_url || "";
  try {
    return `${d.type} · ${new URL(url).host}`;
  } catch {
    return d.type;
  }
}

// Rows are kept by registration id and updated in place (the countdown
// each second, figures on each poll), so focus and buttons survive.
const regRows = new Map();

function regRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  for (let i = 0; i < 5; i++) tr.append(document.createElement("td"));
  const td = document.createElement("td");
  const del = document.createElement("button");
  del.className = "link";
  del.type = "button";
  del.textContent = "Delete";
  del.setAttribute("aria-label", `Delete registration ${r.id}`);
  del.addEventListener("click", async () => {
    const res = await api(`/api/registrations/${encodeURIComponent(r.id)}`, { method: "DELETE" });
    $("#register-result").textContent = res.ok ? "Deleted." : await problem(res);
    pollRegistrations();
  });
  td.append(del);
  tr.append(td);
  return tr;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function drawRegistrations() {
  const body = $("#regs tbody");
  const live = new Set();
  let before = null;
  for (const r of state.registrations) {
    live.add(r.id);
    let tr = regRows.get(r.id);
    if (!tr) {
      tr = regRow(r);
      regRows.set(r.id, tr);
    }
    const left = Math.max(0, Math.round((Date.parse(r.expires_at) - Date.now()) / 1000));
    const cells = [
      r.devices.join(", ") || (r.device_patterns || []).join(", ") || "any",
      destinationText(r.destination),
      `${Math.floor(left / 60)}m ${String(left % 60).padStart(2, "0")}s`,
      fmt(r.delivery?.delivered ?? 0),
      fmt(r.delivery?.dropped ?? 0),
    ];
    cells.forEach((c, i) => setText(tr.children[i], c));
    // Keep the API's order, moving a row only when it is out of place.
    const expected = before ? before.nextElementSibling : body.firstElementChild;
    if (expected !== tr) body.insertBefore(tr, expected);
    before = tr;
  }
  for (const [id, tr] of regRows) {
    if (!live.has(id)) {
      tr.remove();
      regRows.delete(id);
    }
  }
}

$("#register").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const duration = String(f.get("duration")).trim();
  const body = {
    device: f.get("device"),
    duration: /^\d+$/.test(duration) ? Number(duration) : duration,
    destination: { type: "http", url: f.get("url") },
  };
  const types = String(f.get("types")).split(",").map((s) => s.trim()).filter(Boolean);
  if (types.length) body.filter = { types };
  const out = $("#register-result");
  try {
    const res = await api("/api/registrations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    out.textContent = res.ok ? `Registered ${(await res.json()).id}.` : await problem(res);
    pollRegistrations();
  } catch (err) {
    out.textContent = String(err.message || err);
  }
});

// ---- Send a test event ------------------------------------------------------

$("#send").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const q = new URLSearchParams();
  if (f.get("device")) q.set("device", f.get("device"));
  if (f.get("type")) q.set("type", f.get("type"));
  const out = $("#send-result");
  try {
    const res = await api(`/api/events?${q}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: f.get("payload"),
    });
    out.textContent = res.ok ? `Accepted as ${(await res.json()).id}.` : await problem(res);
  } catch (err) {
    out.textContent = String(err.message || err);
  }
});

// ---- Start ------------------------------------------------------------------

connect();
await whoami();
pollStats();
pollHealth();
pollRegistrations();
setInterval(pollStats, 1000);
setInterval(pollHealth, 2000);
setInterval(pollRegistrations, 3000);
setInterval(drawRegistrations, 1000);
