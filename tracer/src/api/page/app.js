// The operator console: a thin client of /api/v1. No build step, no dependencies, nothing
// fetched from elsewhere. The view and its choices live in the URL's hash, so a reload, the
// back button or a shared link land on the same place; the data refreshes every few seconds
// without touching what the operator typed, chose or scrolled to.
"use strict";

const PAGE = 25;
const REFRESH_MS = 5000;
const VIEWS = ["board", "dwell", "detections", "order"];

// What the operator chose; the hash mirrors it.
const state = {
  view: "board",
  status: null, // the board's listed status
  statusOffset: 0,
  detectionsOffset: 0,
  orderId: null,
  statuses: [], // the lifecycle's, from the board
};

function token() {
  return sessionStorage.getItem("order-tracer-token") || "";
}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { headers, credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
  return body;
}

// Builds an element; text goes through textContent, never innerHTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// 42s, 3m 05s, 2h 07m, 3d 4h.
function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 10) return Math.max(0, secs).toFixed(1) + "s";
  const s = Math.round(secs);
  if (s < 60) return s + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
  const h = Math.floor(m / 60);
  if (h < 48) return h + "h " + String(m % 60).padStart(2, "0") + "m";
  return Math.floor(h / 24) + "d " + (h % 24) + "h";
}

function ageOf(iso) {
  return iso ? (Date.now() - new Date(iso).getTime()) / 1000 : null;
}

function orderLink(id) {
  return el("a", { href: "#order/" + encodeURIComponent(id) }, id);
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

function pager(name, page, offset) {
  const nav = document.querySelector(`[data-pager="${name}"]`);
  const [prev, next] = nav.querySelectorAll("button");
  prev.disabled = offset === 0;
  next.disabled = page.next_offset === null || page.next_offset === undefined;
  const shown = page.items.length;
  nav.querySelector(".page-info").textContent = shown
    ? `${offset + 1}–${offset + shown}`
    : "none";
}

// --- Board ---------------------------------------------------------------------------

async function loadBoard() {
  const board = await api("/api/v1/board");
  state.statuses = board.statuses;
  fillSteps();
  const columns = board.statuses.map((c) => {
    const over = c.over_limit > 0;
    const button = el(
      "button",
      {
        type: "button",
        class: "column" + (over ? " warn" : ""),
        role: "listitem",
        "data-status": c.status,
        "aria-pressed": String(state.status === c.status),
        title: `List the orders in ${c.status}`,
      },
      el("span", { class: "name" }, c.status.replaceAll("_", " ")),
      el("span", { class: "count", "data-count": "" }, String(c.orders)),
      c.stuck_after_secs === null
        ? el("span", { class: "over none" }, "no limit")
        : el("span", { class: "over" + (over ? "" : " none"), "data-over": "" }, over ? `${c.over_limit} over limit` : "none late"),
      el("span", { class: "meta" }, c.oldest_secs === null ? "empty" : "oldest " + duration(c.oldest_secs)),
      el("span", { class: "meta" }, c.stuck_after_secs === null ? "" : "limit " + duration(c.stuck_after_secs)),
    );
    button.addEventListener("click", () => {
      state.status = state.status === c.status ? null : c.status;
      state.statusOffset = 0;
      go();
    });
    return button;
  });
  keepFocus($("board"), "data-status", () => $("board").replaceChildren(...columns));
  if (state.status) await loadStatusOrders();
  $("status-orders").hidden = !state.status;
}

async function loadStatusOrders() {
  const status = state.status;
  const limit = state.statuses.find((s) => s.status === status)?.stuck_after_secs ?? null;
  const page = await api(
    `/api/v1/orders?waiting=true&status=${encodeURIComponent(status)}&limit=${PAGE}&offset=${state.statusOffset}`,
  );
  $("status-shown").textContent = status;
  const rows = page.items.map((o) => {
    const waited = (Date.now() * 1e6 - o.status_since) / 1e9;
    return el(
      "tr",
      {},
      el("td", {}, orderLink(o.order_id)),
      el("td", { class: "num" + (limit !== null && waited > limit ? " late" : "") }, duration(waited)),
      el("td", { class: "num" }, limit === null ? "–" : duration(limit)),
      el("td", {}, when(new Date(o.last_activity / 1e6).toISOString())),
    );
  });
  $("status-table").tBodies[0].replaceChildren(...rows);
  pager("status", page, state.statusOffset);
}

// --- Dwell times ---------------------------------------------------------------------

async function loadDwell() {
  const dwell = await api("/api/v1/dwell?window=" + encodeURIComponent($("window").value));
  const scale = Math.max(
    1,
    ...dwell.statuses.map((s) => Math.max(s.p99_secs || 0, s.stuck_after_secs || 0)),
  );
  const pct = (v) => Math.min(100, (100 * v) / scale) + "%";
  const cells = [];
  for (const s of dwell.statuses) {
    const bars = el("div", { class: "bars", role: "img", "aria-label": `${s.status}: median ${duration(s.p50_secs)}, p90 ${duration(s.p90_secs)}, p99 ${duration(s.p99_secs)}` });
    for (const q of ["p99", "p90", "p50"]) {
      const v = s[q + "_secs"];
      if (v === null) continue;
      const bar = el("span", { class: q });
      bar.style.width = pct(v);
      bars.append(bar);
    }
    if (s.stuck_after_secs !== null) {
      const mark = el("span", { class: "limit", title: "stuck limit " + duration(s.stuck_after_secs) });
      mark.style.left = pct(s.stuck_after_secs);
      bars.append(mark);
    }
    const late = s.stuck_after_secs !== null && s.p90_secs !== null && s.p90_secs > s.stuck_after_secs;
    cells.push(
      el("div", { class: "label", role: "rowheader" }, s.status, el("small", {}, `${s.count} stays · limit ${duration(s.stuck_after_secs)}`)),
      bars,
      el("div", { class: "figures" + (late ? " late" : "") }, s.count ? `median ${duration(s.p50_secs)} · p90 ${duration(s.p90_secs)} · p99 ${duration(s.p99_secs)}` : "no stays in the window"),
    );
  }
  $("dwell").replaceChildren(...cells);
}

// --- Detections ----------------------------------------------------------------------

function fillSteps() {
  const select = $("step");
  if (select.options.length > 1 || !state.statuses.length) return;
  for (const s of state.statuses) select.append(el("option", {}, s.status));
}

async function loadDetections() {
  const params = new URLSearchParams({ limit: PAGE, offset: state.detectionsOffset, sort: $("sort").value });
  for (const [key, id] of [["kind", "kind"], ["service", "service"], ["step", "step"]]) {
    if ($(id).value.trim()) params.set(key, $(id).value.trim());
  }
  if ($("state").value === "open") params.set("open", "true");
  if ($("state").value === "resolved") params.set("open", "false");
  const page = await api("/api/v1/detections?" + params);
  const rows = page.items.map((d) =>
    el(
      "tr",
      { class: d.resolved_at ? "resolved" : "" },
      el("td", {}, when(d.at)),
      el("td", { class: "num" }, duration(ageOf(d.at))),
      el("td", {}, orderLink(d.order_id)),
      el("td", {}, el("span", { class: "kind" }, d.kind)),
      el("td", {}, d.step),
      el("td", {}, d.service),
      el("td", {}, d.resolved_at ? when(d.resolved_at) : "open"),
    ),
  );
  $("detections").tBodies[0].replaceChildren(...rows);
  pager("detections", page, state.detectionsOffset);
}

// --- Order ---------------------------------------------------------------------------

async function loadOrder() {
  const target = $("order");
  if (!state.orderId) {
    target.replaceChildren(el("p", { class: "hint" }, "Type an order id, or follow a link from the board or the detections."));
    return;
  }
  const order = await api("/api/v1/orders/" + encodeURIComponent(state.orderId));
  const head = el(
    "div",
    { class: "order-head" },
    el("strong", { id: "order-shown" }, order.order_id),
    el("span", { class: "status", id: "order-status" }, order.status || "unknown"),
    el("span", { class: "facts" }, "first seen " + when(order.first_seen), order.closed_at ? " · closed " + when(order.closed_at) : ""),
    order.trace_url
      ? el("a", { class: "trace-link", id: "trace-link", href: order.trace_url, target: "_blank", rel: "noopener" }, "Open trace in Jaeger ↗")
      : el("span", { class: "facts" }, "trace " + order.trace_id),
  );
  const limits = Object.fromEntries(state.statuses.map((s) => [s.status, s.stuck_after_secs]));
  const total = Math.max(1, order.history.reduce((sum, h) => sum + h.dwell_secs, 0));
  let start = 0;
  const items = order.history.map((h, i) => {
    const open = i === order.history.length - 1 && !order.closed_at;
    const bar = el("span", { class: "bar" + (open ? " open" : "") + (limits[h.status] != null && h.dwell_secs > limits[h.status] ? " late" : "") });
    bar.style.left = (100 * start) / total + "%";
    bar.style.width = (100 * h.dwell_secs) / total + "%";
    start += h.dwell_secs;
    return el(
      "li",
      {},
      el("span", {}, el("span", { class: "status" }, h.status), " ", el("small", {}, h.service)),
      el("span", { class: "track", title: `${h.status}: ${duration(h.dwell_secs)}` }, bar),
      el("small", {}, when(h.at) + " · " + duration(h.dwell_secs) + (open ? " so far" : "")),
    );
  });
  const detections = el(
    "table",
    { id: "order-detections" },
    el("thead", {}, el("tr", {}, el("th", {}, "raised"), el("th", {}, "kind"), el("th", {}, "step not reached"), el("th", {}, "service"), el("th", {}, "resolved"))),
    el(
      "tbody",
      {},
      ...order.detections.map((d) =>
        el("tr", { class: d.resolved_at ? "resolved" : "" }, el("td", {}, when(d.at)), el("td", {}, el("span", { class: "kind" }, d.kind)), el("td", {}, d.step), el("td", {}, d.service), el("td", {}, d.resolved_at ? when(d.resolved_at) : "open")),
      ),
    ),
  );
  target.replaceChildren(
    head,
    el("h3", {}, "Timeline"),
    el("ol", { class: "timeline" }, ...items),
    el("h3", {}, `Detections (${order.detections.length})`),
    order.detections.length ? detections : el("p", { class: "hint" }, "none"),
  );
}

// --- Navigation and refresh ----------------------------------------------------------

// Re-renders `container` while keeping keyboard focus on the same item.
function keepFocus(container, key, render) {
  const focused = document.activeElement;
  const id = container.contains(focused) ? focused.getAttribute(key) : null;
  render();
  if (id !== null) container.querySelector(`[${key}="${CSS.escape(id)}"]`)?.focus();
}

function readHash() {
  const hash = decodeURIComponent(location.hash.slice(1));
  const [view, ...rest] = hash.split("/");
  const arg = rest.join("/");
  if (VIEWS.includes(view)) {
    state.view = view;
    if (view === "board") state.status = arg || null;
    if (view === "order") state.orderId = arg || state.orderId;
  } else if (hash) {
    // An order id alone, as older links have it.
    state.view = "order";
    state.orderId = hash;
  }
}

function hashOf() {
  if (state.view === "board" && state.status) return "#board/" + encodeURIComponent(state.status);
  if (state.view === "order" && state.orderId) return "#order/" + encodeURIComponent(state.orderId);
  return "#" + state.view;
}

async function refresh() {
  try {
    if (state.view === "board") await loadBoard();
    else {
      if (!state.statuses.length) state.statuses = (await api("/api/v1/board")).statuses;
      fillSteps();
      if (state.view === "dwell") await loadDwell();
      if (state.view === "detections") await loadDetections();
      if (state.view === "order") await loadOrder();
    }
    showError(null);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + " · refreshes every " + REFRESH_MS / 1000 + " s";
  } catch (error) {
    showError(error);
  }
}

function show() {
  for (const view of VIEWS) $("view-" + view).hidden = view !== state.view;
  for (const tab of document.querySelectorAll("#tabs a")) {
    tab.setAttribute("aria-current", tab.dataset.view === state.view ? "page" : "false");
  }
  if (state.view === "order" && state.orderId) $("order-id").value = state.orderId;
}

// Applies a change of place: the hash first (history, links), then the view.
function go() {
  const hash = hashOf();
  if (location.hash !== hash) history.pushState(null, "", hash);
  show();
  refresh();
}

window.addEventListener("hashchange", () => {
  readHash();
  show();
  refresh();
});

document.addEventListener("keydown", (event) => {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName);
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "Escape" && typing) return event.target.blur();
  if (typing) return;
  const views = { b: "board", w: "dwell", d: "detections", o: "order" };
  if (views[event.key]) {
    state.view = views[event.key];
    go();
  } else if (event.key === "/") {
    event.preventDefault();
    state.view = "order";
    go();
    $("order-id").focus();
  } else if (event.key === "r") {
    refresh();
  }
});

for (const name of ["status", "detections"]) {
  for (const button of document.querySelectorAll(`[data-pager="${name}"] button`)) {
    button.addEventListener("click", () => {
      const key = name + "Offset";
      state[key] = Math.max(0, state[key] + Number(button.dataset.step) * PAGE);
      refresh();
    });
  }
}

$("detections-form").addEventListener("change", () => {
  state.detectionsOffset = 0;
  refresh();
});
$("detections-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.detectionsOffset = 0;
  refresh();
});
$("dwell-form").addEventListener("change", refresh);
$("order-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.orderId = $("order-id").value.trim();
  state.view = "order";
  go();
});
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("order-tracer-token", $("token").value);
  $("token").value = "";
  refresh();
});

readHash();
show();
refresh();
// Polling, not a stream: every view is a few small queries, and a poll survives proxies,
// restarts and sleeping laptops without reconnection logic.
setInterval(() => {
  if (!document.hidden) refresh();
}, REFRESH_MS);
