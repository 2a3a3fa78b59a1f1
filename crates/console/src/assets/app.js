// ESB console: plain JS, no build step. Data from the API is only ever
// put into the page with textContent (never innerHTML), so object keys,
// item values and log lines cannot inject markup.
"use strict";

const TOKEN_KEY = "esb-console-token";
const $ = (id) => document.getElementById(id);
let current = null;
let timer = null;
const seriesHistory = {};

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
}

function button(label, onClick, cls) {
  const b = el("button", label, { type: "button", class: cls || "link" });
  b.addEventListener("click", onClick);
  return b;
}

async function api(path, opts) {
  const o = opts || {};
  const headers = Object.assign({}, o.headers || {});
  headers["Authorization"] = "Bearer " + sessionStorage.getItem(TOKEN_KEY);
  const r = await fetch("api/" + path, Object.assign({}, o, { headers }));
  if (r.status === 401) {
    logout();
    throw new Error("logged out");
  }
  return r;
}

async function apiJson(path, opts) {
  const r = await api(path, opts);
  const t = await r.text();
  let v = null;
  try { v = JSON.parse(t); } catch (e) { v = { error: t }; }
  if (!r.ok) throw new Error((v && (v.error || v.message || v.__type)) || ("HTTP " + r.status));
  return v;
}

function qs(params) {
  return Object.entries(params).map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
}

// ---- login ----

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  const r = await fetch("api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: $("username").value, password: $("password").value }),
  });
  if (!r.ok) {
    $("login-error").textContent = r.status === 429 ? "Too many attempts; wait and retry." : "Wrong user or password.";
    return;
  }
  const v = await r.json();
  sessionStorage.setItem(TOKEN_KEY, v.token);
  $("password").value = "";
  start();
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  if (timer) clearInterval(timer);
  timer = null;
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("tabs").hidden = true;
  $("login").hidden = false;
}

function start() {
  $("login").hidden = true;
  $("tabs").hidden = false;
  show(location.hash.slice(1) || "functions");
}

function show(page) {
  if (!PAGES[page]) page = "functions";
  current = page;
  if (timer) clearInterval(timer);
  timer = null;
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + page;
  for (const b of document.querySelectorAll("#tabs button[data-page]")) b.classList.toggle("active", b.dataset.page === page);
  if (location.hash !== "#" + page) window.history.replaceState(null, "", "#" + page);
  const load = PAGES[page];
  const run = () => load().catch((e) => console.warn(page, e));
  run();
  if (page === "logs" || page === "metrics" || page === "functions") timer = setInterval(run, 2000);
}

// ---- pages ----

async function functionsPage() {
  const list = await apiJson("functions");
  fill("functions-table", list.map((f) => row([f.name, f.runtime, (f.routes || []).join(", "), f.warm, f.busy, f.starting, f.queued])));
}

async function invocationsPage() {
  const list = await apiJson("invocations");
  fill("invocations-table", list.map((i) => {
    const s = el("span", i.status, { class: i.status === "error" ? "bad" : "ok" });
    return row([i.start, i.function, i.request_id, i.duration_ms === null ? "" : i.duration_ms, s]);
  }));
}

async function logsPage() {
  const q = $("logs-search").value;
  const list = await apiJson("logs?" + qs({ q }));
  const text = list.map((r) => r.ts + " [" + r.function + "] " + r.line).join("\n");
  const pre = $("logs-lines");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = text;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

const CHARTS = [
  ["esb_function_invocations_total", "Invocations"],
  ["esb_function_errors_total", "Errors"],
  ["esb_function_throttles_total", "Throttles"],
  ["esb_function_cold_starts_total", "Cold starts"],
  ["esb_function_concurrent_executions", "Concurrent executions"],
  ["esb_gateway_requests_total", "Gateway requests"],
];

function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const p of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function chart(title, series, perLabel) {
  const box = el("div", null, { class: "chart" });
  box.appendChild(el("h4", title));
  box.appendChild(el("div", series.length ? series[series.length - 1] : 0, { class: "value" }));
  const w = 220, h = 50;
  const s = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  const max = Math.max(1, ...series);
  // One sample draws as a flat line.
  const line = series.length === 1 ? [series[0], series[0]] : series;
  const pts = line.map((v, i) => `${(i * w) / Math.max(1, line.length - 1)},${h - 2 - ((h - 4) * v) / max}`).join(" ");
  s.appendChild(svg("rect", { x: 0, y: 0, width: w, height: h, fill: "#f3f7fc" }));
  s.appendChild(svg("polyline", { points: pts || `0,${h - 2}`, fill: "none", stroke: "#2f7de1", "stroke-width": 2 }));
  box.appendChild(s);
  const entries = Object.entries(perLabel);
  if (entries.length) {
    const bmax = Math.max(1, ...entries.map((e) => e[1]));
    const bars = svg("svg", { width: w, height: 16 * entries.length, role: "img" });
    entries.forEach(([name, v], i) => {
      bars.appendChild(svg("rect", { x: 0, y: i * 16 + 2, height: 12, width: Math.max(1, (120 * v) / bmax), fill: "#7fb3f0" }));
      const t = svg("text", { x: 124, y: i * 16 + 12, "font-size": 11 });
      t.textContent = name + " " + v;
      bars.appendChild(t);
    });
    box.appendChild(bars);
  }
  return box;
}

async function metricsPage() {
  const r = await api("metrics");
  const text = await r.text();
  const root = $("metrics-charts");
  if (!r.ok) { root.replaceChildren(el("p", text, { class: "error" })); return; }
  const m = parseMetrics(text);
  const boxes = [];
  for (const [name, title] of CHARTS) {
    const samples = m[name] || [];
    const total = samples.reduce((a, s) => a + s.value, 0);
    const h = (seriesHistory[name] = seriesHistory[name] || []);
    h.push(total);
    if (h.length > 60) h.shift();
    const per = {};
    for (const s of samples) {
      const k = s.labels.function || s.labels.route || "";
      per[k] = (per[k] || 0) + s.value;
    }
    boxes.push(chart(title, h, per));
  }
  root.replaceChildren(...boxes);
}

// ---- S3 ----
let bucket = null;

function xml(text) {
  return new DOMParser().parseFromString(text, "application/xml");
}
function child(node, name) {
  const c = node.getElementsByTagName(name)[0];
  return c ? c.textContent : "";
}

async function s3Page() {
  $("s3-error").textContent = "";
  const r = await api("s3/buckets");
  const t = await r.text();
  if (!r.ok) { $("s3-error").textContent = t; return; }
  const names = Array.from(xml(t).getElementsByTagName("Bucket")).map((b) => child(b, "Name"));
  $("s3-buckets").replaceChildren(...names.map((n) => {
    const li = el("li");
    li.appendChild(button(n, () => { bucket = n; $("s3-prefix").value = ""; listObjects(); }));
    return li;
  }));
  if (!bucket && names.length) bucket = names[0];
  if (bucket) await listObjects();
}

async function listObjects() {
  $("s3-error").textContent = "";
  $("s3-where").textContent = bucket || "";
  const prefix = $("s3-prefix").value;
  const r = await api("s3/objects?" + qs({ bucket, prefix }));
  const t = await r.text();
  if (!r.ok) { $("s3-error").textContent = t; return; }
  const doc = xml(t);
  const rows = [];
  for (const p of doc.getElementsByTagName("CommonPrefixes")) {
    const pre = child(p, "Prefix");
    rows.push(row([button(pre, () => { $("s3-prefix").value = pre; listObjects(); }), "", "", ""]));
  }
  for (const c of doc.getElementsByTagName("Contents")) {
    const key = child(c, "Key");
    const actions = el("span");
    actions.appendChild(button("Download", () => download(key)));
    actions.appendChild(document.createTextNode(" "));
    actions.appendChild(button("Delete", () => removeObject(key)));
    const name = el("span", key, { class: "s3-key" });
    rows.push(row([name, child(c, "Size"), child(c, "LastModified"), actions]));
  }
  fill("s3-objects", rows);
}

async function download(key) {
  const r = await api("s3/object?" + qs({ bucket, key }));
  if (!r.ok) { $("s3-error").textContent = await r.text(); return; }
  const url = URL.createObjectURL(await r.blob());
  const a = el("a", null, { href: url, download: key.split("/").pop() || "object" });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function removeObject(key) {
  const r = await api("s3/object?" + qs({ bucket, key }), { method: "DELETE" });
  if (!r.ok) $("s3-error").textContent = await r.text();
  await listObjects();
}

async function upload() {
  const f = $("s3-file").files[0];
  if (!bucket || !f) return;
  const key = $("s3-prefix").value + f.name;
  const r = await api("s3/object?" + qs({ bucket, key }), { method: "PUT", body: f });
  if (!r.ok) $("s3-error").textContent = await r.text();
  await listObjects();
}

// ---- DynamoDB ----
let table = null;
let keyNames = [];

async function dynamodbPage() {
  $("ddb-error").textContent = "";
  const v = await apiJson("dynamodb/tables");
  const names = v.TableNames || [];
  $("ddb-tables").replaceChildren(...names.map((n) => {
    const li = el("li");
    li.appendChild(button(n, () => { table = n; scan(); }));
    return li;
  }));
  if (!table && names.length) table = names[0];
  if (table) await scan();
}

function post(path, body) {
  return apiJson(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function scan() {
  $("ddb-error").textContent = "";
  $("ddb-where").textContent = table;
  try {
    const d = await post("dynamodb/describe", { table });
    keyNames = ((d.Table && d.Table.KeySchema) || []).map((k) => k.AttributeName);
    const v = await post("dynamodb/scan", { table });
    fill("ddb-items", (v.Items || []).map((item) => {
      const key = {};
      for (const k of keyNames) key[k] = item[k];
      const cell = el("span", JSON.stringify(item), { class: "item" });
      return row([cell, button("Delete", () => deleteItem(key))]);
    }));
  } catch (e) {
    $("ddb-error").textContent = e.message;
  }
}

async function putItem() {
  $("ddb-error").textContent = "";
  let item;
  try { item = JSON.parse($("ddb-item").value); } catch (e) { $("ddb-error").textContent = "not JSON: " + e.message; return; }
  try { await post("dynamodb/put", { table, item }); } catch (e) { $("ddb-error").textContent = e.message; return; }
  await scan();
}

async function deleteItem(key) {
  try { await post("dynamodb/delete", { table, key }); } catch (e) { $("ddb-error").textContent = e.message; }
  await scan();
}

async function usersPage() {
  const list = await apiJson("users");
  fill("users-table", list.map((u) => row([u.username, (u.groups || []).join(", ")])));
}

const PAGES = {
  functions: functionsPage,
  invocations: invocationsPage,
  logs: logsPage,
  metrics: metricsPage,
  s3: s3Page,
  dynamodb: dynamodbPage,
  users: usersPage,
};

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => login(e).catch((x) => { $("login-error").textContent = String(x); }));
  for (const b of document.querySelectorAll("#tabs button[data-page]")) b.addEventListener("click", () => show(b.dataset.page));
  $("logout").addEventListener("click", logout);
  $("logs-search").addEventListener("input", () => logsPage().catch(() => {}));
  $("s3-refresh").addEventListener("click", () => listObjects());
  $("s3-upload").addEventListener("click", () => upload());
  $("ddb-put").addEventListener("click", () => putItem());
  if (sessionStorage.getItem(TOKEN_KEY)) start(); else logout();
});
