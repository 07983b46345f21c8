// rules.html: filter by soundness category, number of premises, probability range and
// feature; sort; one page of table rows.
const [P1, P2, Q, N_PREMISE, N_RULE, PROB, CAT, WHY] = [0, 1, 2, 3, 4, 5, 6, 7];
const RULES = DATA.rules;
const PAGE_SIZE = 100;

const category = document.getElementById("category");
const premises = document.getElementById("premises");
const pmin = document.getElementById("prob-min");
const pmax = document.getElementById("prob-max");
const feature = document.getElementById("feature");
const sort = document.getElementById("sort");
const body = document.querySelector("#rules tbody");
const shown = document.getElementById("count");
const pages = pager(document.getElementById("pager"), PAGE_SIZE, () => draw());
let matches = RULES;

// "judged": the judged sample, whatever the label (its categories are listed after it).
const JUDGED = "judged";
if (DATA.categories.some((c) => c !== DATA.unjudged)) {
  category.append(el("option", { value: JUDGED, text: "judged (any label)" }));
}
for (const name of DATA.categories) category.append(el("option", { value: name, text: name }));

function number(input, fallback) {
  const v = parseFloat(input.value);
  return Number.isFinite(v) ? v : fallback;
}

function filter() {
  const cat = category.value, arity = premises.value;
  const lo = number(pmin, -Infinity), hi = number(pmax, Infinity);
  const fid = /^#?\d+$/.test(feature.value.trim()) ? Number(feature.value.trim().replace("#", "")) : null;
  matches = RULES.filter((r) =>
    (!cat || r[CAT] === cat || (cat === JUDGED && r[CAT] !== DATA.unjudged)) &&
    (!arity || (arity === "1") === (r[P2] < 0)) &&
    r[PROB] >= lo && r[PROB] <= hi &&
    (fid === null || r[P1] === fid || r[P2] === fid || r[Q] === fid));
  const [key, dir] = sort.value.split(":");
  const col = { prob: PROB, support: N_PREMISE, p1: P1 }[key];
  const sign = dir === "asc" ? 1 : -1;
  matches.sort((a, b) => sign * (a[col] - b[col]) || a[P1] - b[P1] || a[P2] - b[P2] || a[Q] - b[Q]);
  shown.textContent = `${count(matches.length)} of ${count(RULES.length)} rules`;
  pages.reset(matches.length);
  draw();
}

function featureRef(id, role) {
  return el("span", { cls: "premise" }, el("span", { cls: "muted", text: role }),
    el("a", { cls: "fid", href: `features.html#f${id}`, text: `#${id}` }),
    DATA.explanations[id] ?? "(no explanation)");
}

function row(r) {
  const rule = el("td", { cls: "rule" }, featureRef(r[P1], "if "),
    r[P2] >= 0 ? featureRef(r[P2], "and ") : null, featureRef(r[Q], "then "));
  return el("tr", { "data-rule": `${r[P1]},${r[P2]},${r[Q]}` }, rule,
    el("td", { cls: "num", text: fmt(r[PROB], 3) }),
    el("td", { cls: "num", text: `${r[N_RULE]} / ${r[N_PREMISE]}` }),
    el("td", { cls: "num", text: r[P2] >= 0 ? "2" : "1" }),
    el("td", {}, el("span", { cls: `badge ${r[CAT]}`, text: r[CAT] })),
    el("td", { cls: "why", text: r[WHY] || "" }));
}

function draw() {
  body.replaceChildren(...pages.slice(matches).map(row));
}

for (const input of [category, premises, sort]) input.addEventListener("change", filter);
for (const input of [pmin, pmax, feature]) input.addEventListener("input", debounce(filter));
filter();
