"""Markdown pieces the reports share: tables, relative figure links, intervals, and one
run's SAL result as a list. Each report lives beside what it reports on: one model's
(sal.pipeline.analyses.single), the cross-model fit (sal.pipeline.analyses.compare), the
seed spread (sal.pipeline.analyses.robustness) and the demo (sal.demo_report)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import pandas as pd


def relative_link(path: Path, start: Path) -> str:
    """``path`` relative to the report's directory ``start``, so the report's links survive
    moving the run directory."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def format_ci(ci) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)
    clean = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(clean(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def sampling_frame_text(frame: Mapping) -> str:
    """The judged sample's sampling frame per arity, in one line (report.md, the run browser)."""
    return "; ".join(f"{a}-premise: {f['n_sampled']} drawn of {f['n_judgeable']} judgeable ({f['n_rules']} extracted)"
                     for a, f in frame.items())


def _delta_lines(d: Mapping | None) -> list[str]:
    if d is None:
        return []
    if d["delta"] is None:
        return [f"- ΔSAL against the null twin ({d['null_run_dir']}): not computable: {d['not_computable']}"]
    return [f"- **ΔSAL = {d['delta']:.4f} bits** against the null twin ({d['null_run_dir']}: SAL "
            f"{d['sal_null']:.4f}), CI {format_ci(d['ci'])}, one-sided permutation p = {d['p_value']:.4f}"]


def sal_block(summary: Mapping) -> str:
    """One run's sal.json as a Markdown list: SAL, its test, ΔSAL, the judged sample."""
    by_bins = ", ".join(f"B={b}: {v:.4f}" for b, v in summary.get("sal_by_bins", {}).items())
    pair = ", ".join(f"{k} {v:.4f}" for k, v in summary["pairwise"].items())
    lines = [
        f"- **SAL = {summary['sal']:.4f} bits** (B = {summary['bins']}), "
        f"{100 * summary.get('ci_level', 0.95):.0f}% bootstrap CI {format_ci(summary['ci'])}",
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
        lines.append("- sampling frame: " + sampling_frame_text(frame))
    return "\n".join(lines) + "\n"
