// llmtailor workbench: sorting, filtering, live loss curves (server-sent events), playground streaming.
// Everything the server or a model sends is inserted as text (textContent), never as HTML.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function cellValue(row, i, numeric) {
  const text = row.cells[i] ? row.cells[i].textContent.trim() : "";
  if (!numeric) return text.toLowerCase();
  const n = parseFloat(text);
  return isNaN(n) ? -Infinity : n;
}

function makeSortable(table) {
  table.querySelectorAll("th").forEach((th, i) => {
    th.addEventListener("click", () => {
      const numeric = th.dataset.type === "num";
      const asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = cellValue(a, i, numeric), y = cellValue(b, i, numeric);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach((r) => body.appendChild(r));
    });
  });
}

function makeFilter(input) {
  const table = document.getElementById(input.dataset.filterTable);
  input.addEventListener("input", () => {
    const q = input.value.toLowerCase();
    Array.from(table.tBodies[0].rows).forEach((r) => {
      r.style.display = r.textContent.toLowerCase().includes(q) ? "" : "none";
    });
  });
}

function compareButton() {
  const form = document.getElementById("compare-form");
  if (!form) return;
  const button = document.getElementById("compare-button");
  const update = () => { button.disabled = form.querySelectorAll(".run-select:checked").length < 2; };
  form.addEventListener("change", update);
  update();
}

const SVG = "http://www.w3.org/2000/svg";

function drawCurve(holder, points) {
  const w = 640, h = 260, pad = 40;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const add = (name, attrs, text) => {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  add("line", { x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, stroke: "#888" });
  add("line", { x1: pad, y1: pad, x2: pad, y2: h - pad, stroke: "#888" });
  if (points.length) {
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs), y0 = Math.min(...ys);
    const x1 = Math.max(...xs) > x0 ? Math.max(...xs) : x0 + 1;
    const y1 = Math.max(...ys) > y0 ? Math.max(...ys) : y0 + 1e-9;
    const sx = (x) => pad + (x - x0) / (x1 - x0) * (w - 2 * pad);
    const sy = (y) => h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad);
    add("text", { x: pad, y: pad - 8, "font-size": 11 }, y1.toPrecision(4));
    add("text", { x: pad, y: h - pad + 14, "font-size": 11 }, `${y0.toPrecision(4)} @ step ${x0}`);
    add("text", { x: w - pad - 60, y: h - pad + 14, "font-size": 11 }, `step ${x1}`);
    add("polyline", { class: "curve", fill: "none", stroke: "#1f77b4", "stroke-width": 2,
                      points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") });
    points.forEach((p) => add("circle", { class: "point", cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: "#1f77b4" }));
  } else {
    add("text", { x: pad, y: h / 2 }, "no loss logged yet");
  }
  holder.replaceChildren(svg);
}

function liveChart() {
  const holder = document.getElementById("live-chart");
  if (!holder || ["completed", "failed", "interrupted"].includes(holder.dataset.status)) return;
  const byStep = new Map();  // a reconnecting stream replays the file from the start: keep one point per step
  const count = document.getElementById("point-count");
  const status = document.getElementById("run-status");
  const source = new EventSource(`/runs/${encodeURIComponent(holder.dataset.run)}/events`);
  source.addEventListener("points", (e) => {
    JSON.parse(e.data).points.forEach((p) => byStep.set(p[0], p));
    const points = Array.from(byStep.values()).sort((a, b) => a[0] - b[0]);
    drawCurve(holder, points);
    if (count) count.textContent = String(points.length);
    holder.dataset.points = String(points.length);
  });
  source.addEventListener("status", (e) => { if (status) status.textContent = JSON.parse(e.data).status; });
  source.addEventListener("done", (e) => {
    if (status) status.textContent = JSON.parse(e.data).status;
    source.close();
  });
  source.addEventListener("gone", (e) => {
    if (status) status.textContent = "deleted";
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = JSON.parse(e.data).message;
    holder.after(p);
    source.close();
  });
}

async function postJSON(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
                               body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function feedbackButtons(card, id) {
  const row = document.createElement("p");
  for (const [rating, label] of [["up", "▲ good"], ["down", "▼ bad"]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `thumb thumb-${rating}`;
    b.textContent = label;
    b.addEventListener("click", async () => {
      try {
        const r = await postJSON("/api/feedback", { id, rating });
        note.textContent = `recorded ${r.id} (${rating})`;
        note.className = "feedback-note ok";
      } catch (err) { note.textContent = err.message; note.className = "feedback-note error"; }
    });
    row.appendChild(b);
  }
  const note = document.createElement("span");
  note.className = "feedback-note muted";
  row.appendChild(note);
  card.appendChild(row);
}

function showCitations(card, model, final) {
  // The passages the answer cites (or, when it cites none, every passage it was given), each opening to its text.
  const cited = final.citations || [];
  const items = cited.length ? cited : (final.passages || []);
  items.forEach((c, i) => {
    const d = document.createElement("details");
    d.className = "citation";
    const s = document.createElement("summary");
    const label = cited.length ? "" : " (retrieved, not cited)";
    s.textContent = `[${c.number || i + 1}] ${c.source || ""}${c.page ? " p." + c.page : ""}${label}`;
    const body = document.createElement("pre");
    body.className = "passage";
    d.append(s, body);
    d.addEventListener("toggle", async () => {
      if (!d.open || body.dataset.loaded) return;
      const r = await fetch(`/api/passage?model=${encodeURIComponent(model)}&id=${encodeURIComponent(c.chunk_id)}`);
      const data = await r.json().catch(() => ({}));
      body.textContent = r.ok ? data.text : (data.error || `HTTP ${r.status}`);
      body.dataset.loaded = "yes";
    });
    card.appendChild(d);
  });
}

async function askOne(container, model, payload) {
  const card = document.createElement("div");
  card.className = "answer-card";
  card.dataset.model = model;
  const title = document.createElement("h3");
  title.textContent = model;
  const text = document.createElement("div");
  text.className = "text";
  card.append(title, text);
  container.appendChild(card);
  let id = null, final = null, buffer = "";
  try {
    const r = await fetch("/api/play", { method: "POST", headers: { "Content-Type": "application/json",
                                          "X-CSRF-Token": csrf() }, body: JSON.stringify({ ...payload, model }) });
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      throw new Error(data.error || `HTTP ${r.status}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        id = chunk.id || id;
        const choice = (chunk.choices || [])[0];
        if (choice && choice.delta && choice.delta.content) text.textContent += choice.delta.content;
        if (choice && choice.finish_reason) final = chunk;
      }
    }
    card.dataset.done = "yes";
    if (final) showCitations(card, model, final);
    if (id) feedbackButtons(card, id);
  } catch (err) {
    const e = document.createElement("p");
    e.className = "error";
    e.textContent = err.message;
    card.appendChild(e);
    card.dataset.done = "error";
  }
}

function playground() {
  const form = document.getElementById("play-form");
  if (!form) return;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const container = document.getElementById("answers");
    container.replaceChildren();
    const payload = { prompt: document.getElementById("prompt").value,
                      max_tokens: document.getElementById("max-tokens").value,
                      tenant: document.getElementById("tenant").value, groups: document.getElementById("groups").value,
                      level: document.getElementById("level").value };
    if (document.getElementById("use-schema").checked) payload.json_schema = document.getElementById("schema").value;
    form.querySelectorAll(".variant-box:checked").forEach((box) => askOne(container, box.value, payload));
  });
}

const RUN_CELLS = ["method", "dataset", "steps", "tokens_per_s", "final_loss", "headline", "created"];
const RUNS_POLL_MS = 2000;

function td(cls, child) {
  const cell = document.createElement("td");
  cell.className = cls;
  if (child !== undefined) cell.append(child);
  return cell;
}

function newRunRow(r) {
  // The same cells runs.html renders, built as text: ids and values from run folders never become HTML.
  const tr = document.createElement("tr");
  tr.dataset.run = r.id;
  const box = document.createElement("input");
  box.type = "checkbox"; box.name = "ids"; box.value = r.id; box.className = "run-select";
  const link = document.createElement("a");
  link.href = `/runs/${encodeURIComponent(r.id)}`;
  link.textContent = r.id;
  tr.append(td("", box), td("", link), td("c-status", document.createElement("span")));
  RUN_CELLS.forEach((k) => tr.append(td(`c-${k}`, k === "dataset" ? document.createElement("code") : undefined)));
  tr.querySelector(".c-created").before(td("c-gates", document.createElement("span")));
  return tr;
}

function fillRunRow(tr, r) {
  tr.dataset.status = r.status;
  tr.classList.remove("gone");
  const status = tr.querySelector(".c-status span");
  status.className = `status status-${r.status}`;
  status.textContent = r.status;
  RUN_CELLS.forEach((k) => {
    const cell = tr.querySelector(`.c-${k}`);
    (cell.firstElementChild || cell).textContent = r.cells[k];
  });
  const gates = tr.querySelector(".c-gates span");
  gates.className = r.gates === true ? "pass" : r.gates === false ? "fail" : "muted";
  gates.textContent = r.gates === true ? "pass" : r.gates === false ? "FAIL" : "none";
}

function runsPoll() {
  // Light polling of /api/runs (as the jobs list does): runs started from the CLI or the UI appear, running rows
  // update their status, steps and loss, and a deleted run folder is marked as such, all without a reload.
  const body = document.getElementById("runs-body");
  if (!body) return;
  const filter = document.getElementById("run-filter");
  const tick = async () => {
    try {
      if (document.hidden) return;
      const r = await fetch(body.dataset.live);
      if (!r.ok) return;
      const seen = new Set();
      (await r.json()).runs.forEach((run) => {
        seen.add(run.id);
        let tr = Array.from(body.rows).find((row) => row.dataset.run === run.id);
        if (!tr) {
          tr = newRunRow(run);
          body.prepend(tr);  // newest first, as the page is rendered
        }
        fillRunRow(tr, run);
      });
      body.querySelectorAll("tr.no-runs").forEach((row) => { if (seen.size) row.remove(); });
      Array.from(body.rows).forEach((row) => {
        if (!row.dataset.run || seen.has(row.dataset.run) || row.classList.contains("gone")) return;
        row.classList.add("gone");  // its folder was deleted since the page was shown
        row.dataset.status = "deleted";
        const status = row.querySelector(".c-status span");
        status.className = "status status-deleted";
        status.textContent = "deleted";
        const box = row.querySelector(".run-select");
        box.checked = false;
        box.disabled = true;
        box.dispatchEvent(new Event("change", { bubbles: true }));
      });
      if (filter && filter.value) filter.dispatchEvent(new Event("input"));
      body.dataset.refreshed = String(Date.now());
    } catch (err) {
      /* the server restarting or the network dropping: try again on the next tick */
    } finally {
      setTimeout(tick, RUNS_POLL_MS);
    }
  };
  setTimeout(tick, RUNS_POLL_MS);
}

function jobsPoll() {
  const jobs = document.getElementById("jobs");
  if (!jobs || !jobs.querySelector('[data-running="yes"]')) return;
  const timer = setInterval(async () => {
    const r = await fetch("/api/jobs");
    if (!r.ok) return;
    const data = await r.json();
    let running = false;
    data.jobs.forEach((j) => {
      const el = jobs.querySelector(`[data-job="${CSS.escape(j.id)}"]`);
      if (!el) return;
      el.querySelector("pre.log").textContent = j.log;
      el.dataset.running = j.running ? "yes" : "no";
      running = running || j.running;
    });
    if (!running) { clearInterval(timer); window.location.reload(); }
  }, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  document.querySelectorAll("[data-filter-table]").forEach(makeFilter);
  compareButton();
  runsPoll();
  liveChart();
  playground();
  jobsPoll();
});
