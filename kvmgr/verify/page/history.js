"use strict";
/* The history page: lanes of operation bars on a canvas, the checker's orders, zoom, pan and filters.
   Data: the JSON in #history-data (kvmgr/verify/html.py). Operation ids are positions in the history. */
(function () {
  const errors = [];
  function reportError(message) {
    errors.push(String(message));
    document.body.dataset.errors = errors.join("\n");
  }
  window.addEventListener("error", (event) => reportError(event.message));
  window.addEventListener("unhandledrejection", (event) => reportError(event.reason));

  const D = JSON.parse(document.getElementById("history-data").textContent);
  const O = D.ops;
  const N = O.client.length;
  const GUTTER = 128, AXIS = 26, LANE_PAD = 4, MAX_CANVAS = 30000, MIN_BAR = 3, ROW = 30, BAR = 18;
  const $ = (id) => document.getElementById(id);

  /* ---------- derived data ---------- */
  const pos = new Int32Array(N).fill(-1);
  const point = new Float64Array(N).fill(NaN);
  const orderOf = new Map();  // key index -> order
  for (const [key, order] of Object.entries(D.orders)) {
    orderOf.set(Number(key), order);
    order.ids.forEach((id, i) => { pos[id] = i; point[id] = order.points[i]; });
  }
  const unplacedIds = [];
  for (let i = 0; i < N; i++) if (O.flag[i] === 1) unplacedIds.push(i);

  // Event order: every distinct call or return time of the operations shown is one step.
  let times = [0];
  const rs = new Int32Array(N), re = new Int32Array(N), pointEvents = new Float64Array(N).fill(NaN), isShown = new Uint8Array(N);
  function rank(t) {
    let lo = 0, hi = times.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (times[mid] < t) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function computeRanks(shown) {
    const distinct = new Set();
    isShown.fill(0);
    for (const i of shown) { isShown[i] = 1; distinct.add(O.start[i]); if (O.end[i] !== null) distinct.add(O.end[i]); }
    times = distinct.size ? Array.from(distinct).sort((x, y) => x - y) : [0];
    const byClient = new Map();
    for (const i of shown) {
      if (!byClient.has(O.client[i])) byClient.set(O.client[i], []);
      byClient.get(O.client[i]).push(i);
    }
    for (const ids of byClient.values()) {
      ids.sort((x, y) => O.start[x] - O.start[y]);
      ids.forEach((id, n) => rankOne(id, ids, n));
    }
    for (const order of orderOf.values()) spreadPoints(order.ids.filter((i) => isShown[i]));
  }
  function rankOne(id, ids, n) {
    // An operation that never returned lasts until its client's next call (or the end), and at least to its point.
    rs[id] = rank(O.start[id]);
    if (O.end[id] !== null) { re[id] = rank(O.end[id]); return; }
    let next = n + 1;
    while (next < ids.length && O.start[ids[next]] <= O.start[id]) next++;
    let end = next < ids.length ? rank(O.start[ids[next]]) - 1 : times.length - 1;
    if (!Number.isNaN(point[id])) end = Math.max(end, rank(point[id]));
    re[id] = Math.max(end, rs[id]);
  }
  function spreadPoints(ids) {
    // Linearization points in event-order units: several in one step are spread inside it, in order.
    let i = 0;
    while (i < ids.length) {
      const r = rank(point[ids[i]]);
      let j = i;
      while (j < ids.length && rank(point[ids[j]]) === r) j++;
      for (let t = i; t < j; t++) pointEvents[ids[t]] = r + (t - i + 1) / (j - i + 1);
      i = j;
    }
  }

  /* ---------- view state ---------- */
  const S = {
    key: -1, clients: new Set(D.clients.map((_, n) => n)), axis: "events", lines: true,
    u0: 0, u1: 1, selected: -1, hovered: -1, orderStart: null,
    shown: [], lanes: [], rows: [], rowH: 20, height: 0, drawn: 0,
  };
  const ux0 = new Float64Array(N), ux1 = new Float64Array(N), pu = new Float64Array(N), rowOf = new Int32Array(N);

  function computeAxis() {
    for (let i = 0; i < N; i++) {
      if (S.axis === "events") {
        ux0[i] = rs[i]; ux1[i] = re[i] + 1; pu[i] = pointEvents[i];
      } else {
        ux0[i] = O.start[i]; ux1[i] = O.end[i] !== null ? O.end[i] : times[re[i]]; pu[i] = point[i];
      }
    }
  }
  function domain() {
    if (S.axis === "events") return [0, times.length];
    const lo = times[0], hi = times[times.length - 1];
    return [lo, hi > lo ? hi : lo + 1];
  }

  /* ---------- categories and colours ---------- */
  const STYLE = {
    read: { fill: "#d3e3f7", stroke: "#3f6fa8", text: "#17324f", label: "placed: a read (get)" },
    write: { fill: "#d5eccf", stroke: "#44803c", text: "#1d3a19", label: "placed: a write" },
    infoPlaced: { fill: "#ffe1ad", stroke: "#b26a00", text: "#4d2f00", dash: [4, 3], label: "outcome unknown, took effect" },
    infoNone: { fill: "#fff5e3", stroke: "#d8a65c", text: "#7a5a2a", dash: [4, 3], label: "outcome unknown, no effect needed" },
    fail: { fill: "#eceff1", stroke: "#aab3bb", text: "#6b747c", label: "failed (no effect)" },
    unplaced: { fill: "#ffc9cc", stroke: "#c62828", text: "#5c0b0b", width: 2.5, label: "cannot be placed" },
    unordered: { fill: "#f4f1f1", stroke: "#c7a3a3", text: "#7a6b6b", dash: [2, 3], label: "after the failure (not ordered)" },
    skipped: { fill: "#ece6f4", stroke: "#9a86b8", text: "#4f4168", label: "key not checked (expiry)" },
    unchecked: { fill: "#f1f1f1", stroke: "#bdbdbd", text: "#777", label: "key not checked" },
  };
  function category(i) {
    if (O.flag[i] === 1) return "unplaced";
    if (O.status[i] === "fail") return "fail";
    const status = D.keyStatus[O.key[i]];
    if (status === "skipped") return "skipped";
    if (status === "unchecked") return "unchecked";
    if (pos[i] >= 0) return O.status[i] === "info" ? "infoPlaced" : O.name[i] === "get" ? "read" : "write";
    if (O.status[i] === "info") return "infoNone";
    return status === "ok" ? (O.name[i] === "get" ? "read" : "write") : "unordered";
  }
  const cat = Array.from({ length: N }, (_, i) => category(i));

  /* ---------- text ---------- */
  function formatSpan(ns) {
    const a = Math.abs(ns);
    if (a < 1e3) return `${ns.toFixed(0)} ns`;
    if (a < 1e6) return `${(ns / 1e3).toFixed(a < 1e4 ? 2 : 1)} µs`;
    if (a < 1e9) return `${(ns / 1e6).toFixed(a < 1e7 ? 2 : 1)} ms`;
    return `${(ns / 1e9).toFixed(a < 1e10 ? 3 : 2)} s`;
  }
  const at = (t) => `+${formatSpan(t)}`;
  function opText(i, withKey) {
    const key = withKey ? ` ${JSON.stringify(D.keys[O.key[i]])}` : "";
    const args = O.args[i] ? ` ${O.args[i]}` : "";
    return `${O.name[i]}${key}${args} → ${O.result[i]}`;
  }
  function statusText(i) {
    if (O.status[i] === "fail") return "failed: it had no effect";
    if (O.status[i] === "info") return "outcome unknown: it never returned";
    return "ok";
  }
  function orderText(i) {
    const order = orderOf.get(O.key[i]);
    if (O.flag[i] === 1) {
      const n = order ? order.ids.length : 0, state = !order ? "unknown" : n ? order.states[n - 1] : order.initial;
      return `cannot be placed: ${n ? `after #${n}` : "at the start"} the key is ${state}, and none of the highlighted operations can come next`;
    }
    if (pos[i] >= 0) return `#${pos[i] + 1} of ${order.ids.length}${order.complete ? "" : " ordered"}, point ${at(point[i])}`;
    const status = D.keyStatus[O.key[i]];
    if (status === "skipped" || status === "unchecked") return D.keyNote[O.key[i]];
    if (O.status[i] === "fail") return "not in the order (failed)";
    if (O.status[i] === "info") return O.name[i] === "get" ? "not in the order (a get of unknown outcome shows nothing)" :
      "not in the order (it need not have taken effect)";
    return "not ordered: comes after the point where the check got stuck";
  }
  function stateBefore(i) {
    const order = orderOf.get(O.key[i]);
    if (!order || pos[i] < 0) return null;
    return pos[i] === 0 ? order.initial : order.states[pos[i] - 1];
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value; else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  /* ---------- layout: lanes and rows ---------- */
  function layout() {
    const shown = [];
    for (let i = 0; i < N; i++) if ((S.key < 0 || O.key[i] === S.key) && S.clients.has(O.client[i])) shown.push(i);
    computeRanks(shown);
    computeAxis();
    shown.sort((a, b) => rs[a] - rs[b] || re[a] - re[b] || a - b);
    const perClient = new Map();
    for (const i of shown) {
      if (!perClient.has(O.client[i])) perClient.set(O.client[i], []);
      perClient.get(O.client[i]).push(i);
    }
    S.lanes = []; S.rows = [];
    for (const client of [...perClient.keys()].sort((a, b) => a - b)) {
      const ends = [], first = S.rows.length;
      for (const i of perClient.get(client)) {
        let row = ends.findIndex((end) => end < rs[i]);
        if (row < 0) { row = ends.length; ends.push(0); S.rows.push([]); }
        ends[row] = re[i];
        rowOf[i] = first + row;
        S.rows[first + row].push(i);
      }
      S.lanes.push({ client, first, count: ends.length });
    }
    S.shown = shown;
    const rowsTotal = S.rows.length;
    S.rowH = Math.max(4, Math.min(ROW, Math.floor((MAX_CANVAS - AXIS) / Math.max(1, rowsTotal) - 1)));
    let y = AXIS;
    for (const lane of S.lanes) {
      lane.y = y;
      lane.h = lane.count * S.rowH + 2 * LANE_PAD;
      y += lane.h;
    }
    S.height = Math.max(y + 8, 120);
    $("counts").textContent = `${shown.length.toLocaleString()} of ${N.toLocaleString()} operations, ${S.lanes.length} of ${D.clients.length} clients`;
  }
  const rowY = (row) => { const lane = laneOfRow(row); return lane.y + LANE_PAD + (row - lane.first) * S.rowH; };
  function laneOfRow(row) {
    let lo = 0, hi = S.lanes.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (S.lanes[mid].first <= row) lo = mid; else hi = mid - 1; }
    return S.lanes[lo];
  }

  /* ---------- drawing ---------- */
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  let width = 800;
  function plotWidth() { return Math.max(50, width - GUTTER - 10); }
  const X = (u) => GUTTER + (u - S.u0) / (S.u1 - S.u0) * plotWidth();
  const U = (x) => S.u0 + (x - GUTTER) / plotWidth() * (S.u1 - S.u0);
  function focusKey() {
    if (S.key >= 0) return S.key;
    const i = S.hovered >= 0 ? S.hovered : S.selected;
    return i >= 0 ? O.key[i] : -1;
  }

  function draw() {
    scheduled = false;
    width = $("timeline").clientWidth;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(S.height * ratio);
    canvas.style.height = `${S.height}px`;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, S.height);
    drawLanes();
    drawAxis();
    ctx.save();
    ctx.beginPath(); ctx.rect(GUTTER, AXIS, width - GUTTER, S.height - AXIS); ctx.clip();
    const focus = focusKey();
    S.drawn = 0;
    for (let row = 0; row < S.rows.length; row++) drawRow(row, focus);
    if (S.lines && focus >= 0) drawOrderLines(focus);
    ctx.restore();
    document.body.dataset.drawn = String(S.drawn);
  }
  let scheduled = false;
  function redraw() { if (!scheduled) { scheduled = true; requestAnimationFrame(draw); } }

  function drawLanes() {
    ctx.font = "12px system-ui, sans-serif"; ctx.textBaseline = "middle";
    S.lanes.forEach((lane, n) => {
      ctx.fillStyle = n % 2 ? "#fafbfc" : "#ffffff";
      ctx.fillRect(0, lane.y, width, lane.h);
      ctx.strokeStyle = "#e6e9ed"; ctx.beginPath(); ctx.moveTo(0, lane.y + lane.h - 0.5); ctx.lineTo(width, lane.y + lane.h - 0.5); ctx.stroke();
      ctx.fillStyle = "#333";
      ctx.fillText(fit(D.clients[lane.client], GUTTER - 12), 8, lane.y + LANE_PAD + barHeight() / 2);
    });
    ctx.strokeStyle = "#d5dae0"; ctx.beginPath(); ctx.moveTo(GUTTER - 0.5, 0); ctx.lineTo(GUTTER - 0.5, S.height); ctx.stroke();
  }
  function fit(text, room) {
    if (ctx.measureText(text).width <= room) return text;
    let lo = 0, hi = text.length;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (ctx.measureText(`${text.slice(0, mid)}…`).width <= room) lo = mid; else hi = mid - 1; }
    return lo > 0 ? `${text.slice(0, lo)}…` : "";
  }
  function drawAxis() {
    ctx.fillStyle = "#fff"; ctx.fillRect(GUTTER, 0, width - GUTTER, AXIS);
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#68717a"; ctx.textBaseline = "middle";
    ctx.fillText(S.axis === "events" ? "event order" : "real time", 8, AXIS / 2);
    const span = S.u1 - S.u0, target = plotWidth() / 110;
    const raw = span / Math.max(1, target), magnitude = Math.pow(10, Math.floor(Math.log10(raw))), norm = raw / magnitude;
    let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * magnitude;
    if (S.axis === "events") step = Math.max(1, Math.round(step));
    const first = Math.ceil(S.u0 / step) * step;
    ctx.strokeStyle = "#eef0f3";
    for (let u = first; u <= S.u1; u += step) {
      const x = X(u);
      ctx.beginPath(); ctx.moveTo(x + 0.5, AXIS - 5); ctx.lineTo(x + 0.5, S.height); ctx.stroke();
      const t = S.axis === "events" ? times[Math.min(times.length - 1, Math.max(0, Math.floor(u)))] : u;
      ctx.fillText(at(t), x + 3, AXIS / 2);
    }
  }

  function firstVisible(ids) {
    let lo = 0, hi = ids.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (ux1[ids[mid]] < S.u0) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function drawRow(row, focus) {
    const ids = S.rows[row], y = rowY(row), h = barHeight();
    labelEnd = -Infinity;
    for (let n = firstVisible(ids); n < ids.length; n++) {
      const i = ids[n];
      if (ux0[i] > S.u1) break;
      const x0 = X(ux0[i]), x1 = Math.max(X(ux1[i]), x0 + MIN_BAR);
      const style = STYLE[cat[i]];
      ctx.globalAlpha = focus >= 0 && O.key[i] !== focus ? 0.3 : 1;
      ctx.fillStyle = style.fill; ctx.fillRect(x0, y, x1 - x0, h);
      ctx.setLineDash(style.dash || []);
      ctx.lineWidth = i === S.selected ? 2.5 : style.width || 1;
      ctx.strokeStyle = i === S.selected ? "#000" : i === S.hovered ? "#1d232a" : style.stroke;
      ctx.strokeRect(x0 + 0.5, y + 0.5, x1 - x0 - 1, h - 1);
      ctx.setLineDash([]);
      S.drawn++;
      if (x1 - x0 > 34 && S.rowH >= 14) {
        ctx.fillStyle = style.text; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
        const left = Math.max(x0, GUTTER) + 4;
        ctx.fillText(fit(opText(i, S.key < 0), x1 - left - 4), left, y + h / 2);
      }
      if (!Number.isNaN(pu[i]) && x1 - x0 >= 6) drawPoint(i, y, h, x0, x1);
    }
    ctx.globalAlpha = 1;
  }
  function barHeight() { return S.rowH >= ROW ? BAR : S.rowH - 3; }
  function drawPoint(i, y, h, x0, x1) {
    const x = Math.min(Math.max(X(pu[i]), x0 + 1), x1 - 1);
    ctx.fillStyle = "#1d232a";
    ctx.fillRect(x - 1, y, 2, h);
    if (S.rowH < ROW || x1 - x0 < 14) return;
    ctx.beginPath(); ctx.moveTo(x, y + h); ctx.lineTo(x + 4.5, y + h + 6); ctx.lineTo(x - 4.5, y + h + 6); ctx.closePath(); ctx.fill();
    const text = `#${pos[i] + 1}`;
    ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "middle";
    if (x + 6 > labelEnd + 4) {
      ctx.fillText(text, x + 6, y + h + 5);
      labelEnd = x + 6 + ctx.measureText(text).width;
    }
  }
  let labelEnd = -Infinity;
  function visibleOp(i) { return S.clients.has(O.client[i]) && (S.key < 0 || O.key[i] === S.key); }
  function center(i) { return rowY(rowOf[i]) + barHeight() + (S.rowH >= ROW ? 6 : 0); }
  function drawOrderLines(key) {
    const order = orderOf.get(key);
    if (!order) return;
    const visible = order.ids.filter(visibleOp);
    let inView = 0;
    for (const i of visible) if (pu[i] >= S.u0 && pu[i] <= S.u1) inView++;
    ctx.strokeStyle = `rgba(29, 35, 42, ${inView > 150 ? 0.22 : 0.55})`; ctx.lineWidth = 1.2;
    ctx.beginPath();
    let started = false, lastX = 0;
    for (const i of visible) {
      const x = X(pu[i]), y = center(i);
      if (started && ((lastX < GUTTER && x < GUTTER) || (lastX > width && x > width))) { ctx.moveTo(x, y); lastX = x; continue; }
      if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      started = true; lastX = x;
    }
    ctx.stroke();
    if (order.complete || !visible.length) return;
    const last = visible[visible.length - 1];
    ctx.strokeStyle = "#c62828"; ctx.setLineDash([5, 4]); ctx.lineWidth = 1.5;
    for (const i of unplacedIds) {
      if (O.key[i] !== key || !visibleOp(i)) continue;
      ctx.beginPath(); ctx.moveTo(X(pu[last]), center(last)); ctx.lineTo(Math.max(X(ux0[i]), X(pu[last])) + 2, rowY(rowOf[i]) + barHeight() / 2);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  /* ---------- hit testing, tooltip, selection ---------- */
  function hit(mx, my) {
    if (mx < GUTTER || my < AXIS || !S.lanes.length) return -1;
    const lane = S.lanes.find((l) => my >= l.y && my < l.y + l.h);
    if (!lane) return -1;
    const row = lane.first + Math.floor((my - lane.y - LANE_PAD) / S.rowH);
    if (row < lane.first || row >= lane.first + lane.count) return -1;
    const ids = S.rows[row];
    const u = U(mx - 2);
    let lo = 0, hi = ids.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (ux1[ids[mid]] < u) lo = mid + 1; else hi = mid; }
    for (let n = Math.max(0, lo - 1); n < Math.min(ids.length, lo + 3); n++) {
      const i = ids[n], x0 = X(ux0[i]), x1 = Math.max(X(ux1[i]), x0 + MIN_BAR);
      if (mx >= x0 - 2 && mx <= x1 + 2) return i;
    }
    return -1;
  }
  function tooltipText(i) {
    const end = O.end[i] === null ? "never returned" : `returned ${at(O.end[i])} (took ${formatSpan(O.end[i] - O.start[i])})`;
    const lines = [`${D.clients[O.client[i]]}: ${opText(i, true)}`, `${statusText(i)}; called ${at(O.start[i])}, ${end}`, orderText(i)];
    const before = stateBefore(i);
    if (before !== null) lines.push(`key before: ${before}; after: ${orderOf.get(O.key[i]).states[pos[i]]}`);
    return lines.join("\n");
  }
  function showTooltip(i, mx, my) {
    const tip = $("tooltip");
    if (i < 0) { tip.hidden = true; return; }
    tip.textContent = tooltipText(i);
    tip.hidden = false;
    const box = $("timeline").getBoundingClientRect();
    tip.style.left = `${Math.min(mx + 14, box.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${my + 16}px`;
  }
  function select(i, reveal) {
    S.selected = i; S.orderStart = null;
    if (i >= 0 && reveal) {
      if (!visibleOp(i)) { S.key = -1; S.clients.add(O.client[i]); syncControls(); layout(); }
      const span = S.u1 - S.u0;
      if (ux1[i] < S.u0 || ux0[i] > S.u1) { S.u0 = (ux0[i] + ux1[i]) / 2 - span / 2; S.u1 = S.u0 + span; clampView(); }
      const y = rowY(rowOf[i]) + canvas.getBoundingClientRect().top + window.scrollY;
      if (y < window.scrollY + 60 || y > window.scrollY + window.innerHeight - 40) window.scrollTo({ top: y - window.innerHeight / 2 });
    }
    showDetails(); showOrder(); redraw();
  }

  /* ---------- side panels ---------- */
  function showDetails() {
    const section = $("details");
    section.replaceChildren(el("h2", {}, "Operation"));
    const i = S.selected;
    if (i < 0) { section.append(el("p", { class: "note" }, "Point at a bar to see it; click to select it.")); return; }
    const rows = [
      ["id", `${i} (line ${i + 1} of the history)`], ["client", D.clients[O.client[i]]], ["key", JSON.stringify(D.keys[O.key[i]])],
      ["operation", `${O.name[i]}${O.args[i] ? ` ${O.args[i]}` : ""}`], ["result", O.result[i]], ["status", statusText(i)],
      ["called", at(O.start[i])], ["returned", O.end[i] === null ? "never" : `${at(O.end[i])} (took ${formatSpan(O.end[i] - O.start[i])})`],
      ["in the order", orderText(i)],
    ];
    const before = stateBefore(i);
    if (before !== null) rows.push(["key before", before], ["key after", orderOf.get(O.key[i]).states[pos[i]]]);
    const list = el("dl", { id: "details-list", "data-op": String(i) });
    for (const [name, value] of rows) list.append(el("dt", {}, name), el("dd", {}, value));
    section.append(list);
  }
  const ORDER_PAGE = 24;
  function showOrder() {
    const section = $("order");
    const key = S.selected >= 0 ? O.key[S.selected] : S.key >= 0 ? S.key : D.badKey !== null ? D.badKey : -1;
    const order = orderOf.get(key);
    section.replaceChildren();
    if (key < 0) return;
    section.append(el("h2", {}, `Order of key ${JSON.stringify(D.keys[key])}`));
    if (!order) { section.append(el("p", { class: "note" }, D.keyNote[key])); return; }
    const n = order.ids.length;
    section.append(el("p", { class: "note" }, order.complete ? `${n} operations placed, in this order; the key started ${order.initial}.` :
      `The longest prefix the check could order: ${n} operations, from ${order.initial}.`));
    let start = S.orderStart;
    if (start === null) {
      if (S.selected >= 0 && pos[S.selected] >= 0 && O.key[S.selected] === key) start = pos[S.selected] - ORDER_PAGE / 2;
      else start = order.complete ? 0 : n - ORDER_PAGE + 4;
    }
    start = Math.max(0, Math.min(start, n - ORDER_PAGE));
    const stop = Math.min(n, start + ORDER_PAGE);
    const pager = el("div", { class: "pager" },
      el("button", { type: "button", onclick: () => { S.orderStart = start - ORDER_PAGE; showOrder(); } }, "◀ earlier"),
      el("span", { class: "note" }, n ? `${start + 1}–${stop} of ${n}` : "nothing placed"),
      el("button", { type: "button", onclick: () => { S.orderStart = start + ORDER_PAGE; showOrder(); } }, "later ▶"));
    pager.children[0].disabled = start <= 0; pager.children[2].disabled = stop >= n;
    section.append(pager);
    const table = el("table", { class: "order-table" });
    const row = (i, number, state, classes) => el("tr", { class: classes, "data-op": String(i), onclick: () => select(i, true) },
      el("td", { class: "n" }, number), el("td", {}, `${D.clients[O.client[i]]}: ${opText(i, false)}`), el("td", { class: "state", title: state }, state));
    for (let p = start; p < stop; p++) {
      const i = order.ids[p];
      table.append(row(i, `#${p + 1}`, `→ ${order.states[p]}`, i === S.selected ? "current" : ""));
    }
    if (!order.complete && stop >= n) {
      const stuck = unplacedIds.filter((i) => O.key[i] === key);
      const state = n ? order.states[n - 1] : order.initial;
      table.append(el("tr", { class: "stop" }, el("td", { class: "n" }, "✗"),
        el("td", { colspan: "2" }, stuck.length ? `The key is ${state}: none of these can come next` : "The check stopped here (time limit)")));
      for (const i of stuck) table.append(row(i, "!", "", `unplaced${i === S.selected ? " current" : ""}`));
    }
    section.append(table);
  }
  function showHighlights() {
    const list = $("highlighted");
    list.replaceChildren(...unplacedIds.map((i) => el("li", { "data-op": String(i), onclick: () => select(i, true) },
      `${D.clients[O.client[i]]}: ${opText(i, true)}`)));
    document.body.dataset.highlighted = unplacedIds.join(" ");
  }

  /* ---------- zoom and pan ---------- */
  function clampView() {
    const [lo, hi] = domain(), whole = hi - lo;
    let span = Math.min(Math.max(S.u1 - S.u0, S.axis === "events" ? 2 : Math.max(whole * 1e-9, 1e-3)), whole * 1.1);
    let u0 = Math.min(Math.max(S.u0, lo - whole * 0.05), hi + whole * 0.05 - span);
    if (!Number.isFinite(u0)) u0 = lo;
    S.u0 = u0; S.u1 = u0 + span;
  }
  function zoom(factor, aroundX) {
    const u = U(aroundX === undefined ? GUTTER + plotWidth() / 2 : aroundX);
    S.u0 = u - (u - S.u0) * factor; S.u1 = u + (S.u1 - u) * factor;
    clampView(); redraw();
  }
  function fitTo(ids) {
    if (!ids.length) { [S.u0, S.u1] = domain(); clampView(); redraw(); return; }
    let lo = Infinity, hi = -Infinity;
    for (const i of ids) { lo = Math.min(lo, ux0[i]); hi = Math.max(hi, ux1[i]); }
    const margin = Math.max((hi - lo) * 0.08, S.axis === "events" ? 1 : 1);
    S.u0 = lo - margin; S.u1 = hi + margin; clampView(); redraw();
  }
  function failureIds() {
    const ids = unplacedIds.slice();
    for (let i = 0; i < N; i++) if (O.flag[i] === 2) ids.push(i);
    return ids;
  }
  function zoomToFailure() {
    if (!unplacedIds.length) return;
    if (S.key >= 0 && S.key !== D.badKey) { S.key = D.badKey; syncControls(); layout(); }
    fitTo(failureIds().filter(visibleOp));
  }

  /* ---------- controls ---------- */
  function syncControls() {
    $("key-filter").value = String(S.key);
    for (const box of $("client-list").querySelectorAll("input")) box.checked = S.clients.has(Number(box.value));
    $("client-count").textContent = `(${S.clients.size} of ${D.clients.length})`;
    $("axis").value = S.axis;
    $("order-lines").checked = S.lines;
  }
  function buildControls() {
    const counts = new Array(D.keys.length).fill(0);
    for (let i = 0; i < N; i++) counts[O.key[i]]++;
    const keys = $("key-filter");
    keys.append(el("option", { value: "-1" }, `all ${D.keys.length} keys (${N.toLocaleString()} operations)`));
    const mark = { ok: "", illegal: "✗ ", unknown: "? ", skipped: "(not checked) ", unchecked: "(not checked) " };
    D.keys.forEach((key, n) => keys.append(el("option", { value: String(n) }, `${mark[D.keyStatus[n]]}${JSON.stringify(key)} (${counts[n]})`)));
    keys.addEventListener("change", () => { S.key = Number(keys.value); S.selected = -1; relayout(true); });
    const list = $("client-list");
    D.clients.forEach((client, n) => {
      const box = el("input", { type: "checkbox", value: String(n) });
      box.addEventListener("change", () => { if (box.checked) S.clients.add(n); else S.clients.delete(n); relayout(false); });
      list.append(el("label", {}, box, ` ${client}`));
    });
    $("clients-all").addEventListener("click", () => { D.clients.forEach((_, n) => S.clients.add(n)); relayout(false); });
    $("clients-none").addEventListener("click", () => { S.clients.clear(); relayout(false); });
    $("axis").addEventListener("change", () => { S.axis = $("axis").value; computeAxis(); fitTo(S.shown); });
    $("order-lines").addEventListener("change", () => { S.lines = $("order-lines").checked; redraw(); });
    $("zoom-in").addEventListener("click", () => zoom(0.5));
    $("zoom-out").addEventListener("click", () => zoom(2));
    $("zoom-fit").addEventListener("click", () => fitTo(S.shown));
    $("zoom-failure").addEventListener("click", zoomToFailure);
    $("zoom-failure").disabled = !unplacedIds.length;
    const legend = $("legend");
    const used = new Set(cat);
    for (const [name, style] of Object.entries(STYLE)) {
      if (!used.has(name)) continue;
      const swatch = el("i", {});
      swatch.style.background = style.fill; swatch.style.borderColor = style.stroke;
      if (style.dash) swatch.style.borderStyle = "dashed";
      if (style.width) swatch.style.borderWidth = "2px";
      legend.append(el("span", {}, swatch, style.label));
    }
    legend.append(el("span", {}, "▲ linearization point (#n: its place in the key's order, when zoomed in)"));
  }
  function relayout(refit) {
    syncControls(); layout();
    if (S.selected >= 0 && !visibleOp(S.selected)) S.selected = -1;
    if (refit) fitTo(S.shown); else redraw();
    showDetails(); showOrder(); writeHash();
  }
  function writeHash() {
    const params = new URLSearchParams();
    if (S.key >= 0) params.set("key", D.keys[S.key]);
    if (S.clients.size !== D.clients.length) params.set("clients", [...S.clients].map((n) => D.clients[n]).join(","));
    if (S.axis !== "events") params.set("axis", S.axis);
    const text = params.toString();
    history.replaceState(null, "", text ? `#${text}` : location.pathname + location.search);
  }
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.has("key")) S.key = params.get("key") === "" ? -1 : D.keys.indexOf(params.get("key"));
    if (params.has("clients")) {
      const wanted = new Set(params.get("clients").split(","));
      S.clients = new Set(D.clients.map((c, n) => (wanted.has(c) ? n : -1)).filter((n) => n >= 0));
    }
    if (params.get("axis") === "time") S.axis = "time";
    return params;
  }

  /* ---------- events ---------- */
  let drag = null;
  canvas.addEventListener("mousedown", (event) => {
    drag = { x: event.offsetX, u0: S.u0, u1: S.u1, moved: false };
    canvas.classList.add("dragging");
  });
  window.addEventListener("mouseup", (event) => {
    if (!drag) return;
    canvas.classList.remove("dragging");
    if (!drag.moved && event.target === canvas) select(hit(event.offsetX, event.offsetY), false);
    drag = null;
  });
  canvas.addEventListener("mousemove", (event) => {
    if (drag && (drag.moved || Math.abs(event.offsetX - drag.x) > 3)) {
      drag.moved = true;
      const du = (event.offsetX - drag.x) / plotWidth() * (drag.u1 - drag.u0);
      S.u0 = drag.u0 - du; S.u1 = drag.u1 - du; clampView();
      showTooltip(-1); redraw(); return;
    }
    const i = hit(event.offsetX, event.offsetY);
    if (i !== S.hovered) { S.hovered = i; redraw(); }
    showTooltip(i, event.offsetX, event.offsetY);
  });
  canvas.addEventListener("mouseleave", () => { S.hovered = -1; showTooltip(-1); redraw(); });
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const dx = event.shiftKey ? event.deltaY : event.deltaX;
    if (Math.abs(dx) > Math.abs(event.shiftKey ? 0 : event.deltaY)) {
      const du = dx / plotWidth() * (S.u1 - S.u0);
      S.u0 += du; S.u1 += du; clampView(); redraw();
    } else {
      zoom(Math.exp(event.deltaY * 0.0015), event.offsetX);
    }
  }, { passive: false });
  canvas.addEventListener("dblclick", (event) => zoom(0.5, event.offsetX));
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    const keys = { "+": () => zoom(0.5), "=": () => zoom(0.5), "-": () => zoom(2), 0: () => fitTo(S.shown), f: zoomToFailure,
      Escape: () => select(-1, false), ArrowRight: () => step(1), ArrowLeft: () => step(-1) };
    if (keys[event.key]) { keys[event.key](); event.preventDefault(); }
  });
  function step(direction) {
    const i = S.selected;
    if (i < 0) return;
    const order = orderOf.get(O.key[i]);
    if (!order) return;
    if (pos[i] < 0) { if (O.flag[i] === 1 && direction < 0 && order.ids.length) select(order.ids[order.ids.length - 1], true); return; }
    const next = order.ids[pos[i] + direction];
    if (next !== undefined) select(next, true);
  }
  window.addEventListener("resize", redraw);

  /* ---------- start ---------- */
  function start() {
    $("title").textContent = D.title;
    const verdict = $("verdict");
    verdict.className = `verdict ${D.outcome}`;
    verdict.textContent = { ok: "linearizable", illegal: "NOT linearizable", unknown: "unknown (time limit)" }[D.outcome];
    $("detail").textContent = D.outcome === "ok" ? D.headline : D.detail || D.headline;
    $("skipped").textContent = D.skippedNote;
    document.body.dataset.outcome = D.outcome;
    if (D.badKey !== null && D.outcome === "illegal") S.key = D.badKey;
    else if (D.keys.length === 1) S.key = 0;
    const params = readHash();
    buildControls(); syncControls(); layout();
    width = $("timeline").clientWidth;
    if (S.key === D.badKey && unplacedIds.length && !params.has("key")) fitTo(failureIds().filter(visibleOp)); else fitTo(S.shown);
    showHighlights();
    if (params.has("select")) select(Number(params.get("select")), true); else { showDetails(); showOrder(); }
    draw();
    document.body.dataset.lanes = String(S.lanes.length);
    document.body.dataset.state = "ready";
  }
  try { start(); } catch (error) { reportError(error && error.stack ? error.stack : error); throw error; }
})();
