// The gateway's status page: plain JS, no libraries. Polls the JSON API every second with the user's token,
// which is kept in sessionStorage (this tab only) or taken once from the URL fragment (#token=...).
"use strict";
const POLL_MS = 1000;
const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem("dynexec-token") || "";
let services = {};
const results = new Map(); // job ID -> its result as the API gave it (a done job's does not change)
let highlight = "";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: "Bearer " + token } });
  if (r.status === 401) { signOut("the token was refused"); throw new Error("unauthorized"); }
  const body = r.headers.get("Content-Type")?.includes("json") ? await r.json() : await r.blob();
  if (!r.ok && r.status !== 202) throw new Error(body.error || r.statusText);
  return body;
}

function readFragment() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get("token")) { token = h.get("token"); sessionStorage.setItem("dynexec-token", token); }
  if (h.get("job")) highlight = h.get("job");
  const link = location.pathname.match(/^\/jobs\/([^/]+)/); // a result's URL opened in the browser
  if (link) highlight = decodeURIComponent(link[1]);
  if (h.get("token")) history.replaceState(null, "", location.pathname);
}

function signOut(why) {
  token = ""; sessionStorage.removeItem("dynexec-token");
  $("#main").hidden = true; $("#logout").hidden = true; $("#token-form").hidden = false; $("#who").textContent = "";
  $("#token-error").textContent = why || "";
}

async function signIn() {
  try {
    const me = await api("/api/whoami");
    $("#who").textContent = "signed in as " + me.user;
    $("#token-form").hidden = true; $("#main").hidden = false; $("#logout").hidden = false;
    await loadServices();
    poll();
  } catch (e) { if (e.message !== "unauthorized") $("#token-error").textContent = e.message; }
}

const secs = (s) => (s == null ? "" : s.toFixed(s < 10 ? 2 : 1) + " s");
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");

function renderServers(s) {
  const body = $("#servers tbody");
  body.replaceChildren(...s.servers.map((v) => el("tr", { "data-server": v.id },
    el("td", { class: "id" }, v.id), el("td", {}, v.host), el("td", {}, v.pid), el("td", {}, secs(v.lease_left)),
    el("td", {}, v.statistics.in_flight), el("td", {}, v.statistics.jobs_done), el("td", {}, secs(v.statistics.busy_time)),
    el("td", { class: "muted" }, v.services.filter((n) => n !== "python" && n !== "command").join(", ")))));
  $("#server-count").textContent = `(${s.servers.length})`;
  const waiting = Object.entries(s.waiting || {}).map(([k, n]) => `${n} of ${k}`).join(", ");
  $("#backlog").textContent = `cluster: ${s.running} running, ${s.queued} queued on servers` +
    (waiting ? `, waiting in the balancer: ${waiting}` : "") + (s.why && s.why.length ? " — " + s.why.join("; ") : "");
}

function renderValue(r) {
  if (r.kind === "array") {
    const shown = r.value ? JSON.stringify(r.value) : `${r.dtype} array, shape [${r.shape}]`;
    return el("span", {}, el("code", {}, shown), " ",
      el("a", { href: "#", onclick: (e) => { e.preventDefault(); download(r.download.npy, r.job_id + ".npy"); } }, ".npy"), " ",
      el("a", { href: "#", onclick: (e) => { e.preventDefault(); download(r.download.h5, r.job_id + ".h5"); } }, ".h5"));
  }
  return el("code", { class: "value" }, r.value !== null && r.value !== undefined ? JSON.stringify(r.value) : (r.repr || r.kind));
}

async function download(url, name) {
  const blob = await api(url);
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a); a.click(); a.remove();
}

async function resultCell(job) {
  if (job.status !== "ok") return job.error ? el("span", { class: "error" }, `${job.error.type}: ${job.error.message}`) : "";
  if (!results.has(job.job_id)) {
    try { results.set(job.job_id, await api(job.url)); } catch (e) { return el("span", { class: "error" }, e.message); }
  }
  return renderValue(results.get(job.job_id));
}

let linked = null; // the job of a result's URL (/jobs/ID) when it is not among the recent ones (an older job)
async function renderJobs(jobs) {
  if (highlight && !jobs.some((j) => j.job_id === highlight)) {
    if (!linked || (linked.status === "queued" || linked.status === "running")) {
      try { linked = await api(`/api/jobs/${encodeURIComponent(highlight)}`); } catch (e) { linked = null; }
    }
    if (linked) jobs = [linked, ...jobs];
  }
  const rows = [];
  for (const j of jobs) {
    const live = j.status === "queued" || j.status === "running";
    const result = el("td", { class: "result" }, await resultCell(j));
    rows.push(el("tr", { "data-job": j.job_id, class: j.job_id === highlight ? "highlight" : "" },
      el("td", { class: "id" }, el("a", { href: j.url || "#" }, j.job_id)), el("td", {}, j.service || (j.command || []).join(" ")),
      el("td", { class: "status status-" + j.status }, j.status), el("td", {}, when(j.submit_time)), result,
      el("td", {}, live ? el("button", { class: "cancel", onclick: () => cancel(j.job_id) }, "Cancel") : "")));
  }
  $("#jobs tbody").replaceChildren(...rows);
}

async function cancel(id) {
  try { await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }); } catch (e) { alert(e.message); }
}

async function loadServices() {
  services = await api("/api/services");
  const select = $("#service");
  const keep = select.value;
  select.replaceChildren(...Object.keys(services).map((n) => el("option", { value: n }, n)));
  if (keep && services[keep]) select.value = keep;
  renderParams();
}

function renderParams() {
  const s = services[$("#service").value] || { doc: "", params: [] };
  $("#service-doc").textContent = s.doc;
  $("#params").replaceChildren(...s.params.map((p) => el("label", {}, `${p.name} (${p.type}) `,
    el("input", { name: p.name, "data-type": p.type, id: "param-" + p.name,
      value: p.default == null ? "" : String(p.default), ...(p.required ? { required: "" } : {}) }),
    el("span", { class: "doc" }, p.doc))));
}

function paramValue(input) {
  const v = input.value.trim(), t = input.dataset.type;
  if (v === "") return undefined;
  if (t === "int" || t === "float") { const n = Number(v); if (Number.isNaN(n)) throw new Error(`${input.name} must be a number`); return n; }
  if (t === "bool") return v === "true" || v === "1";
  if (t === "ndarray" || v.startsWith("[")) return JSON.parse(v);
  return v;
}

async function submit(ev) {
  ev.preventDefault();
  $("#submit-error").textContent = "";
  try {
    const params = {};
    for (const input of $("#params").querySelectorAll("input")) {
      const v = paramValue(input);
      if (v !== undefined) params[input.name] = v;
    }
    const r = await api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ service: $("#service").value, params }) });
    highlight = r.job_id;
    $("#submitted").replaceChildren("submitted ", el("code", { id: "submitted-id" }, r.job_id));
    poll();
  } catch (e) { $("#submit-error").textContent = e.message; }
}

let timer = null, polling = false;
async function poll() {
  clearTimeout(timer);
  if (!token) return;
  if (!polling) {
    polling = true;
    try {
      const [s, j] = await Promise.all([api("/api/servers"), api("/api/jobs?limit=50")]);
      renderServers(s);
      await renderJobs(j.jobs);
      $("#health").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) { if (e.message !== "unauthorized") $("#health").textContent = "cannot update: " + e.message; }
    polling = false;
  }
  if (token) timer = setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  readFragment();
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault(); token = $("#token-input").value.trim(); sessionStorage.setItem("dynexec-token", token); signIn();
  });
  $("#logout").addEventListener("click", () => signOut());
  $("#service").addEventListener("change", renderParams);
  $("#submit-form").addEventListener("submit", submit);
  if (token) signIn(); else signOut();
});
