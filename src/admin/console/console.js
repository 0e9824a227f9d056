// Brokk console: plain JavaScript, no build step, nothing from the network.
// Each page polls the JSON API every two seconds while it is shown.
"use strict";

const POLL_MS = 2000;
let me = null;          // {login, role, csrf}
let timer = null;
let last = {};          // previous samples, for rates

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (n) => (n ?? 0).toLocaleString("en");
const bytes = (n) => {
  n = n || 0;
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
};
const dur = (s) => {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
};
const when = (ms) => ms ? new Date(ms).toLocaleString() : "";
const us = (v) => v == null ? "–" : v > 1e12 ? "> 2.5 s" : v >= 1000 ? (v / 1000) + " ms" : v + " µs";

function flash(text, bad) {
  const f = $("flash");
  f.textContent = text;
  f.className = bad ? "bad" : "good";
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { f.textContent = ""; f.className = ""; }, 6000);
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") headers["X-Brokk-CSRF"] = (me && me.csrf) || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) { showLogin(); throw new Error((data && data.error) || "log in first"); }
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

function rate(key, value) {
  const now = Date.now();
  const prev = last[key];
  last[key] = { value, now };
  if (!prev || now <= prev.now || value < prev.value) return null;
  return (value - prev.value) * 1000 / (now - prev.now);
}
const rateText = (r) => r == null ? "–" : r.toFixed(r < 10 ? 1 : 0);

function showLogin() {
  me = null;
  $("nav").hidden = true;
  $("who").textContent = "";
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("login").hidden = false;
  stop();
}

function stop() { if (timer) { clearInterval(timer); timer = null; } }

const pages = {
  async overview() {
    const o = await api("GET", "/api/overview");
    const tiles = [
      ["Role", o.role], ["Mode", o.mode], ["Uptime", dur(o.uptime_secs)],
      ["Messages in/s", rateText(rate("enq", o.enqueued))],
      ["Messages out/s", rateText(rate("deq", o.dequeued))],
      ["Pending", num(o.pending)], ["Destinations", num(o.destinations)],
      ["Connections", num(o.connections)],
      ["Receipt p50", us(o.receipt_p50_us)], ["Receipt p99", us(o.receipt_p99_us)],
      ["Memory", `${bytes(o.memory_used_bytes)} / ${bytes(o.memory_limit_bytes)}`],
      ["Store", o.store_limit_bytes ? `${bytes(o.store_used_bytes)} / ${bytes(o.store_limit_bytes)}` : "–"],
    ];
    $("overview-tiles").innerHTML = tiles.map(([k, v]) =>
      `<div class="tile"><div class="k">${esc(k)}</div><div class="v" data-k="${esc(k)}">${esc(v)}</div></div>`).join("");
    const ha = Object.entries(o.ha || {}).concat([
      ["this broker", o.identity], ["version", o.version], ["shards", o.shards],
      ["peers", (o.peers || []).join(", ") || "none configured"],
    ]);
    $("overview-ha").innerHTML = ha.map(([k, v]) =>
      `<tr><th>${esc(k)}</th><td>${esc(v ?? "–")}</td></tr>`).join("");
    if (o.store_full) flash("The store is full: persistent producers are paused.", true);
  },

  async queues() {
    const qs = await api("GET", "/api/queues");
    const admin = me && me.role === "admin";
    $("queues-rows").innerHTML = qs.length ? qs.map((q) => `<tr data-queue="${esc(q.name)}">
      <td>${esc(q.name)}</td><td class="n pending">${num(q.pending)}</td><td class="n">${num(q.in_flight)}</td>
      <td class="n paged">${num(q.paged)}</td><td class="n">${num(q.consumers)}</td><td class="n enqueued">${num(q.enqueued)}</td><td class="n">${num(q.dequeued)}</td>
      <td class="actions"><button data-act="browse">Browse</button>${admin
        ? `<button data-act="purge">Purge</button><button data-act="delete" class="danger">Delete</button>` : ""}</td>
      </tr>`).join("") : `<tr><td colspan="8" class="empty">No queues yet.</td></tr>`;
  },

  async topics() {
    const ts = await api("GET", "/api/topics");
    $("topics-rows").innerHTML = ts.length ? ts.map((t) => `<tr>
      <td>${esc(t.name)}</td><td class="n">${num(t.consumers)}</td><td class="n">${num(t.durable_subscriptions)}</td>
      <td class="n">${num(t.pending)}</td><td class="n">${num(t.enqueued)}</td><td class="n">${num(t.dequeued)}</td></tr>`).join("")
      : `<tr><td colspan="6" class="empty">No topics yet.</td></tr>`;
  },

  async subscribers() {
    const ss = await api("GET", "/api/subscribers");
    const admin = me && me.role === "admin";
    $("subscribers-rows").innerHTML = ss.length ? ss.map((s) => `<tr data-topic="${esc(s.topic)}" data-client="${esc(s.client_id)}" data-name="${esc(s.name)}">
      <td>${esc(s.topic)}</td><td>${esc(s.client_id)}</td><td>${esc(s.name)}</td>
      <td><span class="badge ${s.online ? "ok" : "off"}">${s.online ? "online" : "offline"}</span></td>
      <td class="n">${num(s.pending)}</td><td class="n">${num(s.in_flight)}</td><td class="n">${num(s.paged)}</td><td class="n">${num(s.dequeued)}</td>
      <td class="actions">${admin && !s.online ? `<button data-act="delete" class="danger">Delete</button>` : ""}</td></tr>`).join("")
      : `<tr><td colspan="9" class="empty">No durable subscriptions.</td></tr>`;
  },

  async connections() {
    const cs = await api("GET", "/api/connections");
    $("connections-rows").innerHTML = cs.length ? cs.map((c) => `<tr>
      <td>${esc(c.peer)}</td><td>${esc(c.protocol)}</td><td>${esc(when(c.since_ms))}</td>
      <td class="n">${rateText(rate("in" + c.id, c.messages_in))}</td><td class="n">${rateText(rate("out" + c.id, c.messages_out))}</td>
      <td class="n">${num(c.messages_in)}</td><td class="n">${num(c.messages_out)}</td>
      <td class="n">${bytes(c.bytes_in)}</td><td class="n">${bytes(c.bytes_out)}</td></tr>`).join("")
      : `<tr><td colspan="9" class="empty">No client connections.</td></tr>`;
  },

  async send() { /* a form; nothing to poll */ },

  async cluster() {
    const ms = await api("GET", "/api/cluster");
    $("cluster-rows").innerHTML = ms.map((m) => `<tr>
      <td>${esc(m.url)}</td><td>${m.role ? `<span class="badge role-${esc(m.role)}">${esc(m.role)}</span>` : "–"}</td>
      <td>${esc(m.mode ?? "–")}</td><td>${esc(m.version ?? "–")}</td>
      <td>${m.uptime_secs == null ? "–" : dur(m.uptime_secs)}</td>
      <td>${m.reachable ? `<span class="badge ok">up</span>` : `<span class="badge bad" title="${esc(m.error)}">unreachable</span>`}</td></tr>`).join("");
  },
};

async function refresh(name) {
  try {
    await pages[name]();
  } catch (e) {
    if (me) flash(e.message, true);
  }
}

function show() {
  if (!me) return showLogin();
  const name = (location.hash || "#overview").slice(1);
  const page = pages[name] ? name : "overview";
  $("login").hidden = true;
  $("nav").hidden = false;
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + page;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("on", a.hash === "#" + page);
  stop();
  refresh(page);
  if (page !== "send") timer = setInterval(() => refresh(page), POLL_MS);
}

async function role() {
  try {
    const r = await fetch("/healthz");
    const j = await r.json();
    $("role").textContent = j.role;
    $("role").className = "badge role-" + j.role;
  } catch (_) {
    $("role").textContent = "unreachable";
    $("role").className = "badge bad";
  }
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  try {
    me = await api("POST", "/api/login", { login: f.login.value, passcode: f.passcode.value });
    f.passcode.value = "";
    $("who").innerHTML = `${esc(me.login)} (${esc(me.role)}) <button id="logout" class="link">log out</button>`;
    $("logout").onclick = async () => { await api("POST", "/api/logout").catch(() => {}); showLogin(); };
    show();
  } catch (e) {
    flash(e.message, true);
  }
});

$("queues-rows").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  const name = b.closest("tr").dataset.queue;
  const path = "/api/queues/" + encodeURIComponent(name);
  try {
    if (b.dataset.act === "browse") return browse(name);
    if (b.dataset.act === "purge" && confirm(`Purge every waiting message of ${name}?`)) {
      const r = await api("POST", path + "/purge");
      flash(`Purged ${r.removed} message(s) from ${name}.`);
    }
    if (b.dataset.act === "delete" && confirm(`Delete queue ${name} and its messages?`)) {
      const r = await api("DELETE", path);
      flash(`Deleted ${name} (${r.removed} message(s)).`);
    }
    refresh("queues");
  } catch (e) {
    flash(e.message, true);
  }
});

$("subscribers-rows").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  const row = b.closest("tr").dataset;
  if (!confirm(`Delete durable subscription ${row.client}:${row.name} on ${row.topic} and its messages?`)) return;
  const q = new URLSearchParams({ topic: row.topic, client_id: row.client, name: row.name });
  try {
    const r = await api("DELETE", "/api/subscribers?" + q);
    flash(`Deleted ${row.client}:${row.name} (${r.removed} message(s)).`);
    refresh("subscribers");
  } catch (e) {
    flash(e.message, true);
  }
});

async function browse(name) {
  const r = await api("GET", "/api/queues/" + encodeURIComponent(name) + "/messages?max=50");
  $("browse-name").textContent = name;
  $("browse").hidden = false;
  $("browse-rows").innerHTML = r.messages.length ? r.messages.map((m) => `<tr>
    <td><code>${esc(m.message_id)}</code></td><td class="n">${m.priority}</td><td>${m.persistent ? "yes" : "no"}</td>
    <td>${esc(when(m.timestamp_ms))}</td><td class="n">${m.redeliveries}</td>
    <td>${m.headers.map(([k, v]) => `<div><code>${esc(k)}: ${esc(v)}</code></div>`).join("")}</td>
    <td><pre class="body">${esc(m.body_preview)}${m.body_bytes > m.body_preview.length ? "…" : ""}</pre></td></tr>`).join("")
    : `<tr><td colspan="7" class="empty">No waiting messages.</td></tr>`;
}
$("browse-close").onclick = () => { $("browse").hidden = true; };

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const headers = {};
  for (const line of f.headers.value.split("\n")) {
    const i = line.indexOf(":");
    if (line.trim() && i > 0) headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  try {
    const r = await api("POST", "/api/send", {
      destination: f.destination.value.trim(), body: f.body.value, headers,
      count: Number(f.count.value) || 1, priority: Number(f.priority.value) || 0,
      expires_in_ms: Number(f.expires_in_ms.value) || 0, persistent: f.persistent.checked,
    });
    flash(`Sent ${r.sent} message(s) to ${r.destination}.`);
  } catch (e) {
    flash(e.message, true);
  }
});

window.addEventListener("hashchange", show);

(async function start() {
  role();
  setInterval(role, POLL_MS);
  try {
    const r = await fetch("/api/me", { credentials: "same-origin" });
    if (r.ok) {
      me = await r.json();
      $("who").innerHTML = `${esc(me.login)} (${esc(me.role)}) <button id="logout" class="link">log out</button>`;
      $("logout").onclick = async () => { await api("POST", "/api/logout").catch(() => {}); showLogin(); };
    }
  } catch (_) { /* shown as logged out */ }
  show();
})();
