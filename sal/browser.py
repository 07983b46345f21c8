"""A static HTML browser of one run: ``<run_dir>/browser/index.html`` (the SAL summary and
its figures), ``features.html`` (explanations, verification levels, frequencies, top spans,
decoder norms by layer) and ``rules.html`` (the rules, with the judged sample's categories).

The pages open from disk (file://) with no server and no network: each is one file with its
stylesheet, script and data inlined, because Chromium does not let a file:// page fetch a
sibling file. The data sits in a ``<script type="application/json">`` block; the scripts
(sal/resources/browser/) render it with the DOM's textContent, and every text written here
into HTML goes through html.escape, because explanations, spans and rationales are model
output.

    python -m sal.browser RUN_DIR [RUN_DIR ...]    # (re)write the browser of finished runs

evaluate.py (analysis=single) writes it for its run (sal.pipeline.evaluate.run).
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from sal import atomic
from sal.config.choices import SOUNDNESS_CATEGORIES, VERIFICATION_DECISIONS
from sal.markdown import format_ci, sampling_frame_text
from sal.top_spans import split_at_peak

ASSETS = Path(__file__).resolve().parent / "resources" / "browser"
BROWSER_DIR = "browser"
MAX_SPANS = 10
"""Top spans shown per feature: the explainer reads 15 and the verifier 30, but ten show
what a feature is about and keep a page of thousands of features a few MB."""
MAX_RULES = 20_000
"""Rules embedded in rules.html: every judged rule, then the most probable others. Filtering
20k rows in the browser is instant; a run's millions of two-premise rules are not."""
UNJUDGED = "unjudged"
LAYER_NOTE = ("Layers: beside each top span, the layers where the feature fired (activation above tau) on its "
              "activating token, from features/top_spans.parquet (runs extracted before this was recorded show "
              "none). The strip is the norm of the feature's decoder vector at each monitored layer (from "
              "crosscoder/model.safetensors): the layers it reads from and writes to, not where it fired.")


def write_browser(run_dir: str | Path, max_spans: int = MAX_SPANS, max_rules: int = MAX_RULES) -> Path:
    """Write ``<run_dir>/browser/{index,features,rules}.html`` from whatever of the run's
    outputs exist (features and rules from extract_rules.py, sal.json and its figures from
    evaluate.py); returns index.html's path."""
    run_dir = Path(run_dir)
    out = run_dir / BROWSER_DIR
    out.mkdir(parents=True, exist_ok=True)
    summary = _read_json(run_dir / "sal.json")
    title = _run_title(run_dir, summary)
    features, layers = feature_records(run_dir, max_spans), _layer_ids(run_dir)
    rules, n_rules = rule_records(run_dir, max_rules)
    levels = sorted({f["level"] for f in features}, key=_level_order)
    layer_note = LAYER_NOTE if layers else "Layers: no crosscoder found in this run, so no decoder norms by layer."
    _write_page(out / "features.html", f"{title}: features", "features",
                {"features": features, "levels": levels, "layers": layers, "layer_note": layer_note},
                {"layer_note": layer_note})
    _write_page(out / "rules.html", f"{title}: rules", "rules", _rules_page_data(rules, features),
                {"rules_note": _rules_note(len(rules), n_rules, max_rules)})
    figures = _copy_figures(run_dir, out)
    index = out / "index.html"
    body = summary_html(run_dir, summary, figures, len(features), n_rules)
    atomic.write_text(index, _page(title, title, body, data={}, script=""))
    return index


# --------------------------------------------------------------------------- data
def feature_records(run_dir: Path, max_spans: int = MAX_SPANS) -> list[dict]:
    """One dict per feature of features/explanations.parquet, with its top spans (each
    [activation, text before the activating token, the activating token, the layers it
    fired in there or None where not recorded]), its rule-set
    frequency (rules/feature_counts.parquet) and its decoder norm at each layer."""
    import pandas as pd

    path = run_dir / "features" / "explanations.parquet"
    if not path.exists():
        return []
    expl = pd.read_parquet(path)
    spans = _spans_by_feature(run_dir / "features" / "top_spans.parquet", max_spans)
    counts = _optional_parquet(run_dir / "rules" / "feature_counts.parquet")
    counts = {} if counts is None else {int(r.feature): r for r in counts.itertuples()}
    norms = _decoder_norms(run_dir)
    out = []
    # Columns other writers (older releases, hand-made tables) may lack read as missing.
    expl = expl.reindex(columns=list(dict.fromkeys([*expl.columns, *_FEATURE_COLUMNS])))
    for r in expl.itertuples():
        f, c = int(r.feature), counts.get(int(r.feature))
        out.append({
            "id": f, "expl": _text(r.explanation), "kind": _text(r.summary_kind), "level": verification_level(r),
            "n_act": _int_or_none(r.n_activations), "n_docs": _int_or_none(r.n_documents),
            "n_samples": None if c is None else int(c.n_samples_active),
            "mean_layers": None if c is None else round(float(c.mean_layer_count), 3),
            "dec": None if norms is None or f >= len(norms) else [round(float(v), 4) for v in norms[f]],
            "spans": spans.get(f, []),
        })
    return out


_FEATURE_COLUMNS = ("explanation", "summary_kind", "decision", "status", "n_activations", "n_documents")


def _int_or_none(value) -> int | None:
    return None if value is None or value != value else int(value)  # NaN != NaN


def verification_level(row: Any) -> str:
    """The verifier's decision (Yes/Probably/Maybe/No), else why there is none."""
    decision, kind, status = _text(row.decision), _text(row.summary_kind), _text(row.status)
    if decision:
        return decision
    if kind == "cannot_tell":
        return "Cannot Tell"  # not verified: the explainer found no pattern
    return status or "not judged"  # dead, rare (too few activations), failed, unparseable


def _spans_by_feature(path: Path, max_spans: int) -> dict[int, list]:
    """feature -> its strongest ``max_spans`` spans. A span's text is the window ending at
    the activating token, whose decoded piece is ``token``: splitting it off the end lets
    the page highlight it (when decoding merged it with its neighbour, the whole window is
    shown and the piece highlighted after it)."""
    spans = _optional_parquet(path)
    if spans is None:
        return {}
    spans = spans[spans["rank"] < max_spans].sort_values(["feature", "rank"])
    if "layers" not in spans.columns:  # written before the layers were recorded
        spans = spans.assign(layers=None)
    out: dict[int, list] = {}
    for r in spans.itertuples():
        token = _text(r.token) or ""
        before, _ = split_at_peak(_text(r.text) or "", token)
        # A parquet list reads as an array; a null (not recorded) as None.
        layers = [int(x) for x in r.layers] if hasattr(r.layers, "__len__") else None
        out.setdefault(int(r.feature), []).append([round(float(r.activation), 4), before, token, layers])
    return out


def _decoder_norms(run_dir: Path) -> Optional[list]:
    """[C][L] decoder norms (the crosscoder's own norm, L2 or L1), or None without a crosscoder."""
    path = run_dir / "crosscoder"
    if not (path / "model.safetensors").exists():
        return None
    from sal.crosscoder import Crosscoder

    return Crosscoder.from_pretrained(path).decoder_norms().detach().float().T.tolist()


def _layer_ids(run_dir: Path) -> Optional[list[int]]:
    """The subject model's indices of the monitored layers (crosscoder/config.json)."""
    config = _read_json(run_dir / "crosscoder" / "config.json")
    if not config or not (run_dir / "crosscoder" / "model.safetensors").exists():
        return None
    return [int(x) for x in config.get("layers") or range(int(config["n_layers"]))]


def rule_records(run_dir: Path, max_rules: int = MAX_RULES) -> tuple[list[list], int]:
    """(rows, number of rules extracted): rows are [p1, p2, q, n_premise, n_rule, prob,
    category, rationale] with p2 = -1 for one premise; category is the judge's label, the
    judge status where judging failed, or "unjudged" outside the judged sample. At most
    ``max_rules`` rows: every judged rule first, then the most probable others."""
    import pandas as pd

    rules = _optional_parquet(run_dir / "rules" / "rules.parquet")
    if rules is None:
        return [], 0
    n_total = len(rules)
    key = ["p1", "p2", "q"]
    labelled = _optional_parquet(run_dir / "evaluate" / "labelled_rules.parquet")
    if labelled is not None and len(labelled):
        labelled = labelled[key + ["category", "rationale", "judge_status"]].drop_duplicates(key)
        rules = rules.merge(labelled, on=key, how="left")
    else:
        rules = rules.assign(category=None, rationale=None, judge_status=None)
    judged = rules.judge_status.notna()
    if n_total > max_rules:
        rest = rules[~judged].nlargest(max(0, max_rules - int(judged.sum())), "prob")
        rules = pd.concat([rules[judged], rest])
    rows = []
    for r in rules.itertuples():
        category = _text(r.category) or (_text(r.judge_status) if _text(r.judge_status) else UNJUDGED)
        rows.append([int(r.p1), int(r.p2), int(r.q), int(r.n_premise), int(r.n_rule), round(float(r.prob), 6),
                     category, _text(r.rationale)])
    return rows, n_total


def _rules_page_data(rules: list[list], features: list[dict]) -> dict:
    """rules.html's data: the rows, their categories, and the explanation of every feature
    they name (the page shows a rule as its features' explanations)."""
    explained = {f["id"]: f["expl"] for f in features if f["expl"]}
    used = {r[i] for r in rules for i in (0, 1, 2) if r[i] >= 0}
    return {"rules": rules, "categories": sorted({r[6] for r in rules}, key=_category_order), "unjudged": UNJUDGED,
            "explanations": {str(f): explained[f] for f in sorted(used) if f in explained}}


def _rules_note(n_shown: int, n_total: int, max_rules: int) -> str:
    if n_total == 0:
        return "No rules: run extract_rules.py for this run."
    if n_shown < n_total:
        return (f"Showing {n_shown:,} of the {n_total:,} rules extracted: every judged rule and the most probable "
                f"others (at most {max_rules:,}; rules/rules.parquet has them all). ")
    return (f"All {n_total:,} rules extracted. Category: the judge's soundness label for the judged sample, "
            f"{UNJUDGED} for the others.")


# --------------------------------------------------------------------------- index.html
def summary_html(run_dir: Path, summary: Optional[Mapping], figures: list[str], n_features: int,
                 n_rules: int) -> str:
    """index.html's body: the SAL result, the features' Table 3 figures, the rule counts,
    the figures and links to the two other pages."""
    table3 = _read_json(run_dir / "features" / "table3.json")
    parts = [f'<p>Run directory: <code>{_e(run_dir.resolve())}</code></p>',
             f'<p><a href="features.html">{n_features:,} features</a> · '
             f'<a href="rules.html">{n_rules:,} rules</a></p>',
             "<h2>Soundness-Aware Level</h2>", _kv_table(sal_rows(summary))]
    if table3:
        parts += ["<h2>Features (Table 3)</h2>", _kv_table(_table3_rows(table3))]
    if figures:
        parts += ["<h2>Figures</h2>", '<div class="figs">']
        parts += [f'<img src="{_e(name)}" alt="{_e(name)}">' for name in figures]
        parts.append("</div>")
    return "\n".join(parts)


def sal_rows(summary: Optional[Mapping]) -> list[tuple[str, str]]:
    """(label, value) rows of sal.json's result, as report.md gives them."""
    if summary is None:
        return [("SAL", "not evaluated yet: run evaluate.py for this run")]
    rows = [("model", f"{summary.get('model')} ({summary.get('init', 'pretrained')})")]
    if summary.get("sal") is None:
        return rows + [("SAL", "not computable"), ("why", str(summary.get("not_computable", "")))]
    ci = summary.get("ci") or [math.nan, math.nan]
    rows += [("SAL", f"{summary['sal']:.4f} bits (B = {summary.get('bins')})"),
             (f"{100 * summary.get('ci_level', 0.95):.0f}% bootstrap CI", format_ci(ci)),
             ("permutation p-value", f"{summary.get('p_value', math.nan):.4f} (null mean SAL "
                                     f"{summary.get('null_mean', math.nan):.4f} bits)"),
             ("pairwise JSD", ", ".join(f"{k} {v:.4f}" for k, v in (summary.get("pairwise") or {}).items()))]
    delta = summary.get("delta_sal")
    if delta:
        value = (f"{delta['delta']:.4f} bits [CI {delta['ci'][0]:.4f}, {delta['ci'][1]:.4f}], one-sided p = "
                 f"{delta['p_value']:.4f}" if delta.get("delta") is not None
                 else f"not computable: {delta.get('not_computable')}")
        rows.append(("ΔSAL against the null twin", value))
    rows.append(("rules per category (used for SAL)", _counts(summary.get("counts"))))
    if summary.get("dropped"):
        rows.append(("dropped categories (too few labelled rules)", ", ".join(summary["dropped"])))
    return rows + _sample_rows(summary)


def _sample_rows(summary: Mapping) -> list[tuple[str, str]]:
    """The judged sample: labels, sampling frame, judge."""
    rows = [("labelled rules per category", _counts(summary.get("judge_label_counts"))),
            ("labelled / unlabelled", f"{summary.get('n_labelled')} / {summary.get('n_unlabelled')}")]
    frame = summary.get("sampling_frame") or {}
    if frame:
        rows.append(("sampling frame", sampling_frame_text(frame)))
    judge = summary.get("judge") or {}
    if judge:
        rows.append(("judge", f"{judge.get('backend')} ({judge.get('model')})"))
    return rows


def _table3_rows(t: Mapping) -> list[tuple[str, str]]:
    shares = ", ".join(f"{k} {_percent(v)}" for k, v in (t.get("decision_shares") or {}).items()
                       if _percent(v) != "–")
    return [("features", f"{t.get('n_features')} ({t.get('n_dead')} dead, {_percent(t.get('dead_rate'))})"),
            ("judged", f"{t.get('n_judged')} of {t.get('n_sufficient')} with at least {t.get('min_activations')} "
                       f"activating {t.get('activation_unit')}"),
            ("explainable (Maybe or better)", _percent(t.get("explainable_rate"))),
            ("verification levels", shares or "–"),
            ("explainer / verifier", f"{t.get('judge')} / {t.get('verifier')}")]


def _percent(share: Any) -> str:
    """A share as a percentage; "–" for none (table3.json writes NaN where nothing was judged)."""
    ok = isinstance(share, (int, float)) and not math.isnan(share)
    return f"{100 * share:.1f}%" if ok else "–"


def _counts(counts: Optional[Mapping]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in (counts or {}).items()) or "–"


def _kv_table(rows: list[tuple[str, str]]) -> str:
    cells = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">\n{cells}\n</table>'


def _copy_figures(run_dir: Path, out: Path) -> list[str]:
    """evaluate's figures, copied beside the pages so the browser folder stands alone."""
    names = []
    for png in sorted((run_dir / "evaluate").glob("*.png")):
        shutil.copyfile(png, out / png.name)
        names.append(png.name)
    return names


# --------------------------------------------------------------------------- HTML
def _write_page(path: Path, title: str, name: str, data: Mapping, fields: Mapping[str, str]) -> None:
    """features.html or rules.html: the body template (its notes escaped), the data, the
    shared and the page's own script."""
    body = _fill((ASSETS / f"{name}_body.html").read_text(), {k: _e(v) for k, v in fields.items()})
    script = (ASSETS / "common.js").read_text() + "\n" + (ASSETS / f"{name}.js").read_text()
    atomic.write_text(path, _page(title, title, body, data, script))


def _page(title: str, heading: str, body: str, data: Mapping, script: str) -> str:
    return _fill((ASSETS / "page.html").read_text(), {
        "title": _e(title), "heading": _e(heading), "css": (ASSETS / "browser.css").read_text(),
        "body": body, "data": json_for_script(data), "script": script})


def _fill(template: str, values: Mapping[str, str]) -> str:
    """{{name}} -> values[name] in one pass, so that a value containing "{{...}}" (model
    output) is never substituted again."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


def json_for_script(data: Any) -> str:
    """JSON safe inside <script type="application/json">: "<", ">" and "&" as \\u escapes,
    so no string in it (an explanation reading "</script>") can end the block; the JSON
    parser reads the escapes back as the same characters."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- helpers
def _run_title(run_dir: Path, summary: Optional[Mapping]) -> str:
    model = (summary or {}).get("model") or run_dir.parent.name
    init = (summary or {}).get("init")
    return f"{model} / {run_dir.name}" + (f" ({init})" if init else "")


def _text(value: Any) -> Optional[str]:
    """A parquet string cell as str, or None for null (None, NaN, pd.NA)."""
    import pandas as pd

    return None if value is None or pd.isna(value) else str(value)


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def _optional_parquet(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.exists() else None


def _level_order(level: str) -> tuple[int, str]:
    order = (*VERIFICATION_DECISIONS, "Cannot Tell")
    return (order.index(level) if level in order else len(order), level)


def _category_order(category: str) -> tuple[int, str]:
    order = (*SOUNDNESS_CATEGORIES, UNJUDGED)
    return (order.index(category) if category in order else len(order), category)


def main(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help") for a in argv):
        print("usage: python -m sal.browser RUN_DIR [RUN_DIR ...]   (writes RUN_DIR/browser/index.html)")
        return 0 if argv else 2
    for run_dir in argv:
        if not Path(run_dir).is_dir():
            print(f"{run_dir}: not a directory", file=sys.stderr)
            return 2
        print(write_browser(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
