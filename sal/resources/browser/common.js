"use strict";
// Shared by features.html and rules.html. Every piece of run text (explanations, spans,
// rationales) is model output: it only ever reaches the page through textContent, never
// innerHTML.
const DATA = JSON.parse(document.getElementById("sal-data").textContent);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else if (k === "cls") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// Re-render on typing at most every 120 ms: filtering thousands of rows on each key stroke
// would make typing lag.
function debounce(fn, ms = 120) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// A pager over `items`: renders only one page of rows, so the DOM stays small whatever the
// number of matches.
function pager(container, pageSize, onPage) {
  const prev = el("button", { type: "button", text: "‹ prev", "data-role": "prev" });
  const next = el("button", { type: "button", text: "next ›", "data-role": "next" });
  const info = el("span", { cls: "muted", "data-role": "page-info" });
  container.append(prev, info, next);
  const state = { page: 0, n: 0 };
  const pages = () => Math.max(1, Math.ceil(state.n / pageSize));
  const update = () => {
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages() - 1;
    info.textContent = `page ${state.page + 1} of ${pages()}`;
  };
  prev.addEventListener("click", () => { state.page--; update(); onPage(state.page); });
  next.addEventListener("click", () => { state.page++; update(); onPage(state.page); });
  return {
    reset(n) { state.n = n; state.page = 0; update(); },
    slice(items) { return items.slice(state.page * pageSize, (state.page + 1) * pageSize); },
  };
}

// Counts with thousands separators (20,000), as the summary page writes them.
function count(n) {
  return Number(n).toLocaleString("en");
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}
