"""What each stage logs to W&B at its end (one run per stage, sal.tracking.log_stage):

- extract: the Table 3 figures, a table of the judged features with their top spans, the
  rule counts and the rules' probability histogram;
- evaluate (analysis=single): SAL, its CI and p-value, ΔSAL to the null twin, the
  per-category counts, Figures 2 and 3, a table of the judged rules;
- compare: the fit, its leave-one-out check, the Spearman table, Figures 4 and 5.

Everything is read from what the stage wrote or holds in memory; nothing here decides a
result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import pandas as pd

from sal.config.choices import VERIFICATION_DECISIONS
from sal.top_spans import split_at_peak
from sal.tracking import ANALYSIS_OWNER, images, log_stage

N_SPANS = 5
"""Top spans per feature in the features table: enough to see the pattern, short enough
to read in a table cell (features/top_spans.parquet has all of them)."""


def log_extract(cfg, run_dir: Path, rules: pd.DataFrame, config: dict) -> bool:
    """extract_rules.py's run: Table 3, the features table and the rule counts."""
    return log_stage(cfg, run_dir, "extract", config,
                     lambda: {**table3_metrics(run_dir), **feature_table(run_dir),
                              **rule_metrics(rules, cfg.evaluate.bins)})


def log_evaluate(cfg, run_dir: Path, config: dict, summary: Mapping, labelled: pd.DataFrame,
                 explanations: pd.DataFrame, figures: Mapping[str, Path]) -> bool:
    """evaluate.py's (analysis=single) run; ``figures`` is empty when SAL was not computable."""
    return log_stage(cfg, run_dir, "evaluate", config,
                     lambda: {**sal_metrics(summary), **judged_rules_table(labelled, explanations),
                              **images({f"figures/{_FIGURES.get(k, k)}": p for k, p in figures.items()})})


_FIGURES = {"histograms": "fig2_histograms", "pairwise_jsd": "fig3_pairwise_jsd"}


def log_compare(cfg, run_dir: Path, config: dict, comp, figures: Mapping[str, Path]) -> bool:
    """evaluate.py analysis=compare's run; it belongs to no one model (owner _analysis)."""
    return log_stage(cfg, run_dir, "compare", config, lambda: compare_payload(comp, figures), owner=ANALYSIS_OWNER)


# --------------------------------------------------------------------------- extract
def table3_metrics(run_dir: Path) -> dict:
    """features/table3.json's figures; the explainable rate at each verification level is
    the share of judged features verified at that level or better (at Maybe: Table 3's
    explainable rate)."""
    t3 = json.loads((run_dir / "features" / "table3.json").read_text())
    out = {f"features/{k}": t3[k] for k in ("n_features", "n_dead", "dead_rate", "n_sufficient", "n_judged",
                                            "n_unanswered", "explainable_rate")}
    shares = t3["decision_shares"]
    out.update({f"features/decision_share/{d}": v for d, v in shares.items()})
    running = 0.0
    for level in VERIFICATION_DECISIONS[:3]:
        running += shares.get(level, 0.0)
        out[f"features/explainable_rate/{level}"] = running
    return out


def feature_table(run_dir: Path) -> dict:
    """The features the judge was asked about: id, explanation, verification level,
    frequency and the top spans with the activating (peak) token marked [[so]]."""
    import wandb

    features = run_dir / "features"
    expl = pd.read_parquet(features / "explanations.parquet")
    expl = expl[expl.sufficient].sort_values("feature")
    n_tokens = json.loads((features / "table3.json").read_text())["n_tokens"]
    spans = pd.read_parquet(features / "top_spans.parquet")
    spans = spans[spans["rank"] < N_SPANS].sort_values(["feature", "rank"])
    marked = {int(f): "\n".join(mark_peak(t, tok) for t, tok in zip(g.text, g.token))
              for f, g in spans.groupby("feature")}
    kept = expl.head(wandb.Table.MAX_ROWS)  # W&B cuts longer tables itself, with only a warning
    frame = pd.DataFrame({
        "feature": kept.feature.astype(int), "explanation": kept.explanation, "verification": kept.decision,
        "n_activations": kept.n_activations.astype(int), "n_documents": kept.n_documents.astype(int),
        "frequency": kept.n_activations / max(n_tokens, 1),
        "top_spans": [marked.get(int(f), "") for f in kept.feature]})
    return {"features/table": to_table(frame), "features/table_rows_left_out": int(len(expl) - len(kept))}


def mark_peak(text: str, token: str) -> str:
    """A span (a window ending at the activating token) with that token in [[ ]]."""
    before, ends_in_token = split_at_peak(text, token)
    return f"{before}[[{token}]]" if ends_in_token else f"{text} [[{token}]]"


def rule_metrics(rules: pd.DataFrame, bins: int) -> dict:
    import wandb

    one = rules.p2 < 0
    out = {"rules/n_rules": int(len(rules)), "rules/n_rules_1_premise": int(one.sum()),
           "rules/n_rules_2_premise": int((~one).sum())}
    if len(rules):
        out["rules/prob"] = wandb.Histogram(rules.prob.to_numpy(), num_bins=bins)
    return out


# --------------------------------------------------------------------------- evaluate
def sal_metrics(summary: Mapping) -> dict:
    """SAL with its CI and p-value, ΔSAL to the null twin, the counts per category; a run
    whose SAL was not computable logs why instead."""
    out = {f"judge/label_count/{c}": n for c, n in summary["judge_label_counts"].items()}
    out.update({"judge/n_labelled": summary["n_labelled"], "judge/n_unlabelled": summary["n_unlabelled"]})
    if summary.get("sal") is None:
        return {**out, "sal/not_computable": summary.get("not_computable", "")}
    out.update({"sal/bits": summary["sal"], "sal/ci_low": summary["ci"][0], "sal/ci_high": summary["ci"][1],
                "sal/p_value": summary["p_value"], **{f"sal/count/{c}": n for c, n in summary["counts"].items()},
                **{f"sal/jsd_{k}": v for k, v in summary["pairwise"].items()}})
    delta = summary.get("delta_sal")
    if delta is not None and delta.get("delta") is not None:
        out.update({"sal/delta": delta["delta"], "sal/delta_ci_low": delta["ci"][0],
                    "sal/delta_ci_high": delta["ci"][1], "sal/delta_p_value": delta["p_value"]})
    elif delta is not None:
        out["sal/delta_not_computable"] = delta.get("not_computable", "")
    return out


def judged_rules_table(labelled: pd.DataFrame, explanations: pd.DataFrame) -> dict:
    """The judged sample with the features' explanations in place of their ids (a
    one-premise rule's P2 is empty), its probability, the judge's label and rationale."""
    import wandb

    expl = dict(zip(explanations.feature.astype(int), explanations.explanation))
    rows = labelled.head(wandb.Table.MAX_ROWS)
    frame = pd.DataFrame({
        "p1": rows.p1.astype(int), "p2": rows.p2.astype(int), "q": rows.q.astype(int),
        "P1": [expl.get(int(f)) for f in rows.p1], "P2": [expl.get(int(f)) if f >= 0 else "" for f in rows.p2],
        "C": [expl.get(int(f)) for f in rows.q], "prob": rows.prob.astype(float), "label": rows.category,
        "rationale": rows.rationale, "judge_status": rows.judge_status})
    return {"judge/rules": to_table(frame), "judge/rules_left_out": int(len(labelled) - len(rows))}


# --------------------------------------------------------------------------- compare
def compare_payload(comp, figures: Mapping[str, Optional[Path]]) -> dict:
    """The exp-power fit, its leave-one-out R^2 (None under 4 models), the per-model table,
    the Spearman table (Table 1) and Figures 4 and 5."""
    names = {"fig4": "fig4_sal_vs_accuracy", "fig5": "fig5_scale_family"}
    return {"compare/alpha": comp.fit.alpha, "compare/beta": comp.fit.beta, "compare/r2": comp.fit.r2,
            "compare/loo_r2": None if comp.loo is None else comp.loo.r2, "compare/n_models": int(len(comp.table)),
            "compare/models": to_table(comp.table), "compare/spearman": to_table(comp.spearman.reset_index()),
            **images({f"figures/{names.get(k, k)}": p for k, p in figures.items()})}


def to_table(frame: pd.DataFrame):
    """A wandb.Table of plain Python values (no pandas dtypes, missing values as None)."""
    import wandb

    plain = frame.astype(object).where(frame.notna(), None)
    return wandb.Table(columns=[str(c) for c in plain.columns], data=plain.values.tolist())
