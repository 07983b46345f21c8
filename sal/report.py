"""Markdown reports with PNG figures: one model's SAL, the cross-model analysis, the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sal import atomic
from typing import Mapping

import numpy as np
import pandas as pd


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def case_studies(labelled: pd.DataFrame, explanations: pd.DataFrame, n: int) -> pd.DataFrame:
    """Table 2 layout: the highest-probability judged rules per category, with the features'
    explanations and the judge's rationale."""
    expl = dict(zip(explanations.feature.astype(int), explanations.explanation))
    ok = labelled[labelled.judge_status == "ok"]
    rows = []
    for cat, group in ok.groupby("category", sort=False):
        for r in group.sort_values("prob", ascending=False).head(n).itertuples():
            rows.append({"category": cat, "prob": round(float(r.prob), 4),
                         "P1": expl.get(int(r.p1), ""), "P2": expl.get(int(r.p2), "") if r.p2 >= 0 else "",
                         "C": expl.get(int(r.q), ""), "rationale": r.rationale or ""})
    return pd.DataFrame(rows, columns=["category", "prob", "P1", "P2", "C", "rationale"])


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)
    clean = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(clean(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _delta_lines(d: Mapping | None) -> list[str]:
    if d is None:
        return []
    if d["delta"] is None:
        return [f"- ΔSAL against the null twin ({d['null_run_dir']}): not computable: {d['not_computable']}"]
    return [f"- **ΔSAL = {d['delta']:.4f} bits** against the null twin ({d['null_run_dir']}: SAL "
            f"{d['sal_null']:.4f}), CI {_fmt_ci(d['ci'])}, one-sided permutation p = {d['p_value']:.4f}"]


def sal_block(summary: Mapping) -> str:
    by_bins = ", ".join(f"B={b}: {v:.4f}" for b, v in summary.get("sal_by_bins", {}).items())
    pair = ", ".join(f"{k} {v:.4f}" for k, v in summary["pairwise"].items())
    lines = [
        f"- **SAL = {summary['sal']:.4f} bits** (B = {summary['bins']}), "
        f"{100 * summary.get('ci_level', 0.95):.0f}% bootstrap CI {_fmt_ci(summary['ci'])}",
        f"- permutation test against a soundness-agnostic model: p = {summary['p_value']:.4f} "
        f"(null mean SAL {summary.get('null_mean', float('nan')):.4f} bits at these sample sizes)",
        f"- pairwise JSD: {pair}",
        *_delta_lines(summary.get("delta_sal")),
        f"- SAL at other bin counts: {by_bins}",
        f"- labelled rules per category: {summary.get('judge_label_counts', summary['counts'])}"
        f" (used for SAL: {summary['counts']})",
    ]
    if summary.get("dropped"):
        lines.append(f"- **warning**: categories with no or too few labelled rules (evaluate.min_rules_per_category) were dropped: {summary['dropped']}")
    h = summary.get("human_agreement")
    if h:
        lines.append(f"- agreement with human labels on {h['n']} rules: raw {h['raw_agreement']:.3f}, "
                     f"Cohen's kappa {h['kappa']:.3f} (paper: 0.566 raw agreement)")
    frame = summary.get("sampling_frame")
    if frame:
        lines.append("- sampling frame: " + "; ".join(
            f"{a}-premise: {f['n_sampled']} drawn of {f['n_judgeable']} judgeable ({f['n_rules']} extracted)"
            for a, f in frame.items()))
    return "\n".join(lines) + "\n"


def write_model_report(path: Path, summary: Mapping, labelled: pd.DataFrame, explanations: pd.DataFrame,
                       figures: Mapping[str, Path], n_cases: int = 5) -> Path:
    path = Path(path)
    parts = [f"# Soundness-Aware Level: {summary['model']} ({summary.get('init', 'pretrained')})\n",
             sal_block(summary),
             f"\n![rule probabilities by soundness]({_rel(figures['histograms'], path.parent)})\n",
             f"\n![pairwise JSD]({_rel(figures['pairwise_jsd'], path.parent)})\n",
             "\n## Case studies (Table 2 layout)\n",
             _md_table(case_studies(labelled, explanations, n_cases))]
    atomic.write_text(path, "\n".join(parts))
    return path


def write_compare_report(path: Path, comp, figures: Mapping[str, Path], label: str = "SAL") -> Path:
    """``label``: what the table's ``sal`` column holds (SAL, or ΔSAL against the null twin)."""
    path = Path(path)
    fit, loo = comp.fit, comp.loo
    table = comp.table.copy()
    table["loo_prediction"] = loo.predictions if loo is not None else np.nan
    parts = [
        f"# {label} vs post-RL performance\n",
        *([f"The `sal` column holds {label}: each model's SAL minus its null twin's.\n"] if label != "SAL" else []),
        f"Fit of eps = exp(-alpha * s^beta), s = {label}, on the error rate ({comp.accuracy_column}): "
        f"**alpha = {fit.alpha:.3f}, beta = {fit.beta:.3f}, R^2 = {fit.r2:.3f}**; " +
        (f"leave-one-out R^2 = {loo.r2:.3f}.\n" if loo is not None else "no leave-one-out fit (it needs 4 models).\n"),
        _md_table(table.round(4)),
        "\n## Spearman correlation (Table 1 layout)\n",
        _md_table(comp.spearman),
        f"\n![Figure 4]({_rel(figures['fig4'], path.parent)})\n",
        f"\n![Figure 5]({_rel(figures['fig5'], path.parent)})\n",
    ]
    if comp.unmatched:
        parts.append(f"\nModels without an accuracy entry (left out): {comp.unmatched}\n")
    atomic.write_text(path, "\n".join(parts))
    return path


def write_robustness_report(path: Path, summary: Mapping, seeds: pd.DataFrame, sensitivity: pd.DataFrame,
                            figure: Path) -> Path:
    """analysis=robustness: the headline intervals, what dominates them, the per-seed table
    and the sensitivity table."""
    path = Path(path)
    level = f"{100 * summary['ci_level']:.0f}%"
    parts = [f"# SAL robustness: {summary['model']}\n",
             f"K = {len(seeds)} crosscoder seeds, each a full pipeline run (train, extract, judge) beside its "
             f"null twin; B = {summary['bins']}. The headline interval pools every seed's bootstrap replicates "
             f"with equal weight (rule resampling and seed spread together).\n"]
    for name, label in (("sal", "SAL"), ("delta_sal", "ΔSAL")):
        sp = summary["spread"].get(name)
        if sp is None:
            parts.append(f"- **{label}**: not computable on any seed\n")
            continue
        parts.append(
            f"- **{label} = {sp['mean']:.4f} bits**, {level} interval {_fmt_ci(sp['interval'])}; variance from "
            f"rule resampling {sp['rule_var']:.2e}, from the seed spread {sp['seed_var']:.2e} "
            f"({100 * sp['seed_share']:.0f}% of the total): **{sp['dominant']} dominates**")
    parts += ["\n## Per seed\n", _md_table(seeds.round(4).replace({np.nan: "—"})),
              "\n## Sensitivity\n",
              "Mean over the runs at each setting (sd over seeds where there are several); `rules_used`: labelled "
              "rules left after the setting's filter and the thin-category rule.\n",
              _md_table(sensitivity.round(4).assign(value=[f"{v:g}" for v in sensitivity["value"]])),
              f"\n![robustness]({_rel(Path(figure), path.parent)})\n"]
    atomic.write_text(path, "\n".join(parts))
    return path


def format_timings(timings, total_s: float, hardware: str) -> str:
    """Markdown table of the demo's per-stage wall times."""
    lines = ["## Wall time per stage\n", f"Measured on: {hardware}.\n", "| run | stage | wall time |", "|---|---|---|"]
    lines += [f"| {label} | {stage} | {seconds:.0f} s |" for label, stage, seconds in timings]
    lines.append(f"| **total** (with start-up and the report) | | **{total_s:.0f} s ({total_s / 60:.1f} min)** |")
    return "\n".join(lines) + "\n"


def dictionary_line(config_json: Path) -> str:
    """The trained dictionary's reconstruction and sparsity, from its exported config."""
    if not config_json.exists():
        return ""
    m = json.loads(config_json.read_text()).get("final_metrics") or {}
    if "nmse" not in m:
        return ""
    from sal.training.summary import regime_verdict

    feats = f"{m['l0_features']:.1f} distinct features per token, " if "l0_features" in m else ""
    coef = f", final alpha {m['sparsity_coef']:.3g}" if "sparsity_coef" in m else ""
    return (f"- dictionary: nmse {m['nmse']:.3f}, {feats}{m['l0']:.1f} (feature, layer) pairs per token, dead "
            f"{100 * m['dead_frac']:.2f}%{coef}; {regime_verdict(m) if 'l0_features' in m else ''}\n")


def delta_row(model_dir: Path, null_dir: Path) -> str:
    """The table row of ΔSAL = SAL(model) - SAL(null twin): the model run's sal.json when its
    evaluation had evaluate.null_twin set, else computed from both runs' judged samples with the
    model run's evaluate settings."""
    from sal.pipeline.evaluate import delta_to_null_twin, judged_probs

    summary = json.loads((model_dir / "sal.json").read_text())
    d = summary.get("delta_sal")
    if d is None:
        ev = summary["config"]["evaluate"]
        d = delta_to_null_twin(judged_probs(model_dir, ev), null_dir, ev)
    if d["delta"] is None:
        return f"| **ΔSAL (model − null twin)** | not computable | — | — | {d['not_computable']} |"
    return (f"| **ΔSAL (model − null twin)** | **{d['delta']:.4f}** | {_fmt_ci(d['ci'])} | {d['p_value']:.4f} "
            f"(one-sided) | SAL {d['sal_model']:.4f} − {d['sal_null']:.4f} |")


def write_demo_report(path: Path, runs: Mapping[str, Path], timings=(), total_s: float | None = None,
                      hardware: str = "", null_twin: tuple[str, str] | None = None) -> Path:
    """Side-by-side report of the subject model and its null (random-weights) control, and
    the wall time of each stage when given. ``null_twin`` = (model label, null label) puts
    ΔSAL, the model's gain over its null twin, first in the table."""
    path = Path(path)
    parts = ["# SAL on the offline default\n",
             "Subject model SmolLM2-135M-Instruct on packaged MATH/GSM8K data, next to the same "
             "architecture with random weights reading the same text (the null model).\n",
             "| run | SAL (bits) | 95% CI | permutation p | rules per category |", "|---|---|---|---|---|"]
    blocks = []
    if null_twin is not None:
        parts.append(delta_row(*(Path(runs[label]) for label in null_twin)))
    for label, run_dir in runs.items():
        s = json.loads((Path(run_dir) / "sal.json").read_text())
        if s.get("sal") is None:
            parts.append(f"| {label} | not computable | — | — | {s.get('judge_label_counts', {})} |")
        else:
            parts.append(f"| {label} | {s['sal']:.4f} | {_fmt_ci(s['ci'])} | {s['p_value']:.4f} | {s['counts']} |")
        ev = Path(run_dir) / "evaluate"
        t3 = Path(run_dir) / "features" / "table3.json"
        extra = ""
        if t3.exists():
            t = json.loads(t3.read_text())
            extra = (f"- features: dead rate {100 * t['dead_rate']:.2f}%, explainable rate "
                     f"{100 * (t['explainable_rate'] or 0):.2f}% of {t['n_judged']} judged\n")
        extra += dictionary_line(Path(run_dir) / "crosscoder" / "config.json")
        if s.get("sal") is None:
            blocks += [f"\n## {label}\n", f"- **SAL not computable**: {s['not_computable']}\n", extra]
            continue
        blocks += [f"\n## {label}\n", sal_block(s), extra,
                   f"![histograms]({_rel(ev / 'fig2_histograms.png', path.parent)})\n",
                   f"![pairwise JSD]({_rel(ev / 'fig3_pairwise_jsd.png', path.parent)})\n",
                   f"Full report: [{_rel(ev / 'report.md', path.parent)}]({_rel(ev / 'report.md', path.parent)})\n"]
    if timings:
        blocks += ["\n" + format_timings(timings, total_s if total_s is not None else sum(t for *_, t in timings),
                                         hardware or "unrecorded hardware")]
    atomic.write_text(path, "\n".join(parts + blocks))
    return path
