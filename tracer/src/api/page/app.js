// The operator page: a thin client of /api/v1. No build step, no dependencies.
"use strict";

const PAGE = 20;
let offset = 0;

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
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function showError(error) {
  document.getElementById("error").textContent = error ? String(error.message || error) : "";
}

async function showOrder(id) {
  const target = document.getElementById("order");
  target.replaceChildren();
  try {
    const order = await api("/api/v1/orders/" + encodeURIComponent(id));
    showError(null);
    const timeline = el("ol", { class: "timeline" });
    for (const step of order.history) {
      timeline.append(el("li", {},
        el("span", { class: "status" }, step.status), " ",
        el("small", {}, when(step.at) + " · " + step.service + " · " + step.dwell_secs.toFixed(1) + " s")));
    }
    const detections = el("ul", {});
    for (const d of order.detections) {
      detections.append(el("li", { class: d.resolved_at ? "resolved" : "open" },
        el("span", { class: "kind" }, d.kind), " " + d.step + " · " + d.service + " · " + when(d.at) +
        (d.resolved_at ? " (resolved " + when(d.resolved_at) + ")" : "")));
    }
    target.append(
      el("p", {}, "Order ", el("strong", { id: "order-shown" }, order.order_id), " is ",
        el("span", { class: "status", id: "order-status" }, order.status || "unknown")),
      el("p", {}, el("small", {}, "trace " + order.trace_id)),
      el("h3", {}, "Timeline"), timeline,
      el("h3", {}, "Detections"), order.detections.length ? detections : el("p", {}, "none"));
  } catch (error) {
    showError(error);
  }
}

async function showDetections() {
  const kind = document.getElementById("kind").value;
  const service = document.getElementById("service").value.trim();
  const query = new URLSearchParams({ open: "true", limit: PAGE, offset });
  if (kind) query.set("kind", kind);
  if (service) query.set("service", service);
  try {
    const page = await api("/api/v1/detections?" + query);
    showError(null);
    const rows = page.items.map((d) => {
      const link = el("a", { href: "#" + encodeURIComponent(d.order_id) }, d.order_id);
      return el("tr", {}, el("td", {}, when(d.at)), el("td", {}, link),
        el("td", {}, el("span", { class: "kind" }, d.kind)), el("td", {}, d.step), el("td", {}, d.service));
    });
    document.querySelector("#detections tbody").replaceChildren(...rows);
    document.getElementById("page-info").textContent =
      page.items.length ? (offset + 1) + "–" + (offset + page.items.length) : "no open detections";
    document.getElementById("prev").disabled = offset === 0;
    document.getElementById("next").disabled = page.next_offset == null;
  } catch (error) {
    showError(error);
  }
}

function route() {
  const id = decodeURIComponent(location.hash.slice(1));
  if (id) {
    document.getElementById("order-id").value = id;
    showOrder(id);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("order-tracer-token", document.getElementById("token").value);
    document.getElementById("token").value = "";
    showDetections();
    route();
  });
  document.getElementById("order-form").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = encodeURIComponent(document.getElementById("order-id").value.trim());
  });
  document.getElementById("detections-form").addEventListener("submit", (event) => {
    event.preventDefault();
    offset = 0;
    showDetections();
  });
  document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); showDetections(); });
  document.getElementById("next").addEventListener("click", () => { offset += PAGE; showDetections(); });
  window.addEventListener("hashchange", route);
  showDetections();
  route();
});
