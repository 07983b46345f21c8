// features.html: search by id or text, filter by verification level, one page of cards.
const FEATURES = DATA.features;
const PAGE_SIZE = 50;
const byId = new Map(FEATURES.map((f) => [f.id, f]));
// Lower-cased text per feature, built once: a search is then one substring test per feature.
const haystack = FEATURES.map((f) =>
  [f.expl || "", ...f.spans.map((s) => s[1] + s[2])].join("\n").toLowerCase());

const search = document.getElementById("search");
const level = document.getElementById("level");
const list = document.getElementById("features");
const shown = document.getElementById("count");
const pages = pager(document.getElementById("pager"), PAGE_SIZE, () => draw());
let matches = FEATURES;

for (const name of DATA.levels) level.append(el("option", { value: name, text: name }));

function filter() {
  const q = search.value.trim().toLowerCase();
  const id = /^#?\d+$/.test(q) ? Number(q.replace("#", "")) : null;
  const lv = level.value;
  matches = [];
  FEATURES.forEach((f, i) => {
    if (lv && f.level !== lv) return;
    if (id !== null ? f.id !== id : q && !haystack[i].includes(q)) return;
    matches.push(f);
  });
  shown.textContent = `${count(matches.length)} of ${count(FEATURES.length)} features`;
  pages.reset(matches.length);
  draw();
}

function layerStrip(f) {
  if (!f.dec || !DATA.layers) return null;
  const top = Math.max(...f.dec) || 1;
  const strip = el("span", { cls: "layers", title: DATA.layer_note });
  f.dec.forEach((v, i) => {
    const cell = el("span", { text: String(DATA.layers[i]), title: `layer ${DATA.layers[i]}: decoder norm ${fmt(v)}` });
    cell.style.background = `rgba(36, 87, 197, ${(0.85 * v / top).toFixed(3)})`;
    if (v / top > 0.55) cell.style.color = "#fff";
    strip.append(cell);
  });
  return strip;
}

function spanItem(s) {
  // s = [activation, text before the activating token, the activating token, the layers the
  // feature fired in there (null: not recorded, runs extracted before they were)]; newlines
  // are shown as ↵ so that each span stays on one line.
  const show = (t) => t.replace(/\r?\n/g, "↵");
  // An activating token that is only blanks would be an empty highlight: show its spaces.
  const token = s[2].trim() === "" ? show(s[2]).replace(/ /g, "␣") : show(s[2]);
  const fired = s[3] ? el("span", { cls: "fired", text: s[3].map((l) => `L${l}`).join(" "),
    title: "layers where the feature fired on the highlighted token" }) : null;
  return el("li", {}, el("span", { cls: "act", text: fmt(s[0], 2) }), fired, show(s[1]), el("mark", { text: token }));
}

function card(f) {
  const stats = (f.n_act === null ? "activations not recorded" : `${f.n_act} activating tokens in ${f.n_docs} documents`) +
    (f.n_samples === null ? "" :
      `; active in ${f.n_samples} rule-set samples, in ${fmt(f.mean_layers, 2)} layers on average`);
  return el("section", { cls: "feature", id: `f${f.id}` },
    el("h3", {}, el("a", { href: `#f${f.id}`, text: `#${f.id}` }),
      el("span", { cls: `badge ${f.level}`, text: f.level, title: "verification level" }),
      f.kind ? el("span", { cls: "muted", text: f.kind }) : null),
    el("div", { cls: "expl", text: f.expl || "(no explanation)" }),
    el("div", { cls: "muted", text: stats }),
    f.dec && DATA.layers
      ? el("div", {}, el("span", { cls: "muted", text: "decoder norm by layer (reads/writes, not where it fired): " }),
        layerStrip(f)) : null,
    el("ol", { cls: "spans" }, ...f.spans.map(spanItem)));
}

function draw() {
  list.replaceChildren(...pages.slice(matches).map(card));
}

// features.html#f12 (the rules page links here) shows feature 12 alone.
function fromHash() {
  const m = /^#f(\d+)$/.exec(location.hash);
  if (!m || !byId.has(Number(m[1]))) {
    // Back from features.html#f12 to the plain page: show every feature again.
    if (!location.hash && search.value.startsWith("#")) { search.value = ""; filter(); }
    return;
  }
  search.value = `#${m[1]}`;
  level.value = "";
  filter();
  document.getElementById(`f${m[1]}`)?.classList.add("focus");
}

search.addEventListener("input", debounce(filter));
level.addEventListener("change", filter);
window.addEventListener("hashchange", fromHash);
filter();
fromHash();
