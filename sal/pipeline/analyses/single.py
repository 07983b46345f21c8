"""analysis=single: one model's rules -> a judged sample -> SAL with its CI and p-value, ΔSAL
against the null twin (evaluate.null_twin), agreement with human labels, figures and the
run's report.md."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Dict, Mapping

import numpy as np
import pandas as pd

from sal import atomic
from sal.config.schema import SALConfig
from sal.errors import ConfigError, MissingInputError
from sal.markdown import markdown_table, relative_link, sal_block
from sal.pipeline import steps
from sal.pipeline.analyses.judged_sample import delta_to_null_twin, enforce_min_rules
from sal.tracking_tables import log_evaluate

log = logging.getLogger("sal")

JUDGE_TALLY_FILE = "judge_report.json"
"""The judge's tally (items, tokens, cost, problems) from the run that judged
evaluate/labelled_rules.parquet."""


def run_single(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    rules_path, expl_path = _require_extracted(run_dir)
    labelled_step, sal_step = steps.labelled_rules_step(cfg, run_dir), steps.sal_step(cfg, run_dir)
    if sal_step.is_fresh(cfg.force):
        summary = json.loads(sal_step.output.read_text())
        print(f"[evaluate] {cfg.model.name} ({cfg.model.init}): up to date in {sal_step.output}: SAL = "
              f"{summary.get('sal')} (force=true recomputes it)")
        return summary
    null_dir = check_null_twin(cfg, run_dir)
    sal_step.forget()
    rejudge = not (labelled_step.is_fresh(cfg.force) and _all_answered(labelled_step.output))
    rules = pd.read_parquet(rules_path)
    explanations = pd.read_parquet(expl_path)
    explained = set(explanations.feature[explanations.explanation.notna()].astype(int))
    sample, frame = sample_rules(rules, explained, cfg.evaluate.n_rules_per_arity, cfg.evaluate.seed)
    print(f"[evaluate] sampling frame: {json.dumps(frame)}")
    judge = _judge_for(cfg, run_dir)
    out = run_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    labelled = _labelled_sample(labelled_step, rejudge, sample, explanations, judge, out)
    ok = labelled[labelled.judge_status == "ok"]
    probs = _probs_by_category(cfg, ok)
    reason = not_computable_reason(probs, cfg.evaluate.min_rules_per_category, rules, explained, frame)
    if reason and cfg.evaluate.empty_category == "drop":
        summary = _write_not_computable(cfg, run_dir, reason, ok, labelled, frame, judge, resolved)
        log_evaluate(cfg, run_dir, resolved, summary, labelled, explanations, figures={})
        return summary
    if reason:
        raise ConfigError(f"{reason} Label more rules (evaluate.n_rules_per_arity), or set evaluate.empty_category=drop "
                          f"to record the run as not computable (sal: null).")
    result = _evaluate_sal(cfg, probs)
    summary = _run_summary(cfg, run_dir, ok, labelled, frame, judge, resolved, **result.to_dict())
    if null_dir is not None:
        summary["delta_sal"] = delta_to_null_twin(probs, null_dir, dataclasses.asdict(cfg.evaluate))
    if cfg.evaluate.human_labels:
        _add_human_agreement(summary, cfg.evaluate.human_labels, explanations, judge)
    figures = _figures(cfg, probs, result, out)
    report_path = write_model_report(out / "report.md", summary, labelled, explanations, figures,
                                     n_cases=cfg.evaluate.n_case_studies)
    # One sal.json, at the run directory's top level, where compare and the demo report look;
    # written last: it is what says "evaluated".
    atomic.write_json(run_dir / "sal.json", summary)
    sal_step.record()
    log_evaluate(cfg, run_dir, resolved, summary, labelled, explanations, figures)
    _print_result(cfg, result, summary, null_dir, judge, report_path)
    return summary


def _require_extracted(run_dir: Path) -> tuple[Path, Path]:
    """The extract stage's rules and explanations, which this analysis starts from."""
    rules_path, expl_path = run_dir / "rules" / "rules.parquet", run_dir / "features" / "explanations.parquet"
    for p in (rules_path, expl_path):
        if not p.exists():
            raise MissingInputError(f"{p} not found: run `python extract_rules.py` with the same model and "
                                    f"run_name first (or point run_dir= at a finished run).")
    return rules_path, expl_path


def sample_rules(rules: pd.DataFrame, explained: set, n_per_arity: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """Uniform sample of ``n_per_arity`` rules per arity from the rules whose features all
    have an explanation (only those can be put to the judge). Returns (sample, frame)."""
    rng = np.random.default_rng(seed)
    frame: Dict[str, dict] = {}
    parts = []
    judgeable = rules.p1.isin(explained) & rules.q.isin(explained) & ((rules.p2 < 0) | rules.p2.isin(explained))
    for arity, sel in (("1", rules.p2 < 0), ("2", rules.p2 >= 0)):
        pool = rules[sel & judgeable]
        take = min(n_per_arity, len(pool))
        idx = np.sort(rng.choice(len(pool), size=take, replace=False)) if take else np.array([], int)
        parts.append(pool.iloc[idx])
        frame[arity] = {"n_rules": int(sel.sum()), "n_judgeable": int(len(pool)), "n_sampled": int(take)}
    return pd.concat(parts, ignore_index=True), frame


def check_null_twin(cfg: SALConfig, run_dir: Path) -> Path | None:
    """The evaluated null twin's run directory (evaluate.null_twin), or None when unset."""
    twin = steps.null_twin_dir(cfg, run_dir)
    if twin is None:
        return None
    if twin.resolve() == run_dir.resolve():
        raise ConfigError(f"evaluate.null_twin={cfg.evaluate.null_twin} names this run itself ({run_dir}): "
                          f"name the random-weights run (control=null_twin) of the pretrained one.")
    needed = [twin / "sal.json", twin / "evaluate" / "labelled_rules.parquet"]
    if not all(p.exists() for p in needed):
        raise MissingInputError(
            f"evaluate.null_twin={cfg.evaluate.null_twin}: {needed[0]} not found: evaluate the null twin first, "
            f"with this run's model and settings: `python train.py control=null_twin`, then `python "
            f"extract_rules.py control=null_twin` and `python evaluate.py control=null_twin` (run_name={twin.name}); "
            f"or unset evaluate.null_twin.")
    return twin


def _judge_for(cfg: SALConfig, run_dir: Path):
    from sal.judge import make_judge

    loader = None
    if cfg.judge.backend == "hf_local":
        from sal.models import load_named_model

        loader = lambda: load_named_model(cfg.judge.hf_model or cfg.model.name,  # noqa: E731
                                          dtype=cfg.judge.hf_dtype, device=cfg.judge.hf_device)
    return make_judge(cfg.judge, run_dir=run_dir, loader=loader)


def _all_answered(labelled_path: Path) -> bool:
    """A judged sample with failed requests is judged again (the answered items come from
    the judge's cache), so a rerun after a server outage completes it."""
    labelled = pd.read_parquet(labelled_path, columns=["judge_status"])
    failed = int((labelled.judge_status == "failed").sum())
    if failed:
        log.warning("judged rule sample: judging again: %d of %d requests failed last time", failed, len(labelled))
    return failed == 0


def _labelled_sample(labelled_step, rejudge: bool, sample: pd.DataFrame, explanations: pd.DataFrame, judge,
                     out: Path) -> pd.DataFrame:
    """The judged sample: read back when up to date, else judged now (with the judge's tally
    beside it, for a later run that reuses the sample)."""
    from sal.rule_judging import judge_rules

    if not rejudge:
        return pd.read_parquet(labelled_step.output)
    labelled_step.forget()
    labelled = judge_rules(sample, explanations, judge)
    atomic.write_json(out / JUDGE_TALLY_FILE, judge.tally.to_dict())
    atomic.write_parquet(labelled, labelled_step.output)
    labelled_step.record()
    return labelled


def _probs_by_category(cfg: SALConfig, ok: pd.DataFrame) -> Dict[str, np.ndarray]:
    from sal import metrics

    probs = metrics.probs_by_category_from_frame(ok, categories=cfg.evaluate.categories)
    return enforce_min_rules(probs, cfg.evaluate.min_rules_per_category, cfg.evaluate.empty_category)


def _evaluate_sal(cfg: SALConfig, probs: Dict[str, np.ndarray]):
    from sal import metrics

    ev = cfg.evaluate
    return metrics.evaluate_sal(
        probs, bins=ev.bins, report_bins=ev.report_bins, n_bootstrap=ev.n_bootstrap,
        n_permutations=ev.n_permutations, ci_level=ev.ci_level, seed=ev.seed,
        drop_empty=ev.empty_category == "drop")


def not_computable_reason(probs: Dict[str, np.ndarray], min_rules: int, rules: pd.DataFrame, explained: set,
                          frame: dict) -> str | None:
    """Why SAL cannot be computed from these labelled rules (fewer than two categories with
    at least ``min_rules`` each), or None when it can."""
    kept = {k: len(v) for k, v in probs.items() if len(v)}
    if len(kept) >= 2:
        return None
    n_judgeable = sum(f["n_judgeable"] for f in frame.values())
    return (f"SAL needs two soundness categories with at least {min_rules} labelled rules each "
            f"(evaluate.min_rules_per_category); this run has {kept or 'none'}. Its rules come from "
            f"{len(explained)} explained features ({len(rules)} rules extracted, {n_judgeable} judgeable): "
            f"a dictionary with so few explainable features yields too few rules.")


def _add_human_agreement(summary: dict, human_labels: str, explanations: pd.DataFrame, judge) -> None:
    from sal.human_agreement import agreement_with_human_labels

    summary["human_agreement"] = h = agreement_with_human_labels(human_labels, explanations, judge)
    print(f"[evaluate] agreement with human labels on {h['n']} rules: raw {h['raw_agreement']:.3f}, "
          f"Cohen's kappa {h['kappa']:.3f}")


def _figures(cfg: SALConfig, probs: Dict[str, np.ndarray], result, out: Path) -> dict:
    from sal import plots

    return {
        "histograms": plots.plot_category_histograms(probs, out / "fig2_histograms.png", bins=cfg.evaluate.bins,
                                                      title=f"{cfg.model.name}: rule probability by soundness"),
        "pairwise_jsd": plots.plot_pairwise_jsd(result.pairwise, out / "fig3_pairwise_jsd.png", sal=result.sal),
    }


def _run_summary(cfg: SALConfig, run_dir: Path, ok: pd.DataFrame, labelled: pd.DataFrame, frame: dict, judge,
                 resolved: dict, **result) -> dict:
    """sal.json's content: which run, the SAL result (or why there is none), the judged sample."""
    return {
        "model": cfg.model.name, "init": cfg.model.init, "run_dir": str(run_dir),
        **result,
        "sampling_frame": frame,
        "judge_label_counts": {c: int((ok.category == c).sum()) for c in cfg.evaluate.categories},
        "n_labelled": int(len(ok)), "n_unlabelled": int(len(labelled) - len(ok)),
        "judge": {"backend": cfg.judge.backend, "model": judge.tally.model, "report": _judge_tally(judge, run_dir)},
        "config": resolved,
    }


def _judge_tally(judge, run_dir: Path) -> dict:
    """This run's judge tally; when the judged sample was reused (nothing asked this time),
    the tally of the run that judged it, marked as such."""
    saved = run_dir / "evaluate" / JUDGE_TALLY_FILE
    if judge.tally.n_items == 0 and saved.exists():
        return {**json.loads(saved.read_text()), "from_earlier_run": True}
    return judge.tally.to_dict()


def _write_not_computable(cfg: SALConfig, run_dir: Path, reason: str, ok: pd.DataFrame, labelled: pd.DataFrame,
                          frame: dict, judge, resolved: dict) -> dict:
    """Under evaluate.empty_category=drop, a run whose rules cannot give a SAL still ends
    with a sal.json that says so (sal: null) instead of failing: a null model whose
    features are not explainable is a result, not an error."""
    summary = _run_summary(cfg, run_dir, ok, labelled, frame, judge, resolved, sal=None, not_computable=reason)
    atomic.write_json(run_dir / "sal.json", summary)
    steps.sal_step(cfg, run_dir).record()
    log.warning("%s (%s): SAL not computable. %s", cfg.model.name, cfg.model.init, reason)
    print(f"[evaluate] {cfg.model.name} ({cfg.model.init}): SAL not computable: {reason}")
    return summary


def _print_result(cfg: SALConfig, result, summary: dict, null_dir: Path | None, judge, report_path: Path) -> None:
    ci = result.ci
    print(f"[evaluate] {cfg.model.name} ({cfg.model.init}): SAL = {result.sal:.4f} bits "
          f"[{100 * cfg.evaluate.ci_level:.0f}% CI {ci[0]:.4f}, {ci[1]:.4f}], permutation p = {result.p_value:.4f}, "
          f"rules per category {result.counts}")
    d = summary.get("delta_sal")
    if d is not None and d["delta"] is not None:
        print(f"[evaluate] ΔSAL against the null twin {null_dir}: {d['delta']:.4f} bits "
              f"[CI {d['ci'][0]:.4f}, {d['ci'][1]:.4f}], one-sided p = {d['p_value']:.4f}")
    elif d is not None:
        print(f"[evaluate] ΔSAL against the null twin {null_dir}: not computable: {d['not_computable']}")
    print(f"[evaluate] {judge.tally.summary()}")
    print(f"[evaluate] report: {report_path}")


# --------------------------------------------------------------------------- report.md
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


def write_model_report(path: Path, summary: Mapping, labelled: pd.DataFrame, explanations: pd.DataFrame,
                       figures: Mapping[str, Path], n_cases: int = 5) -> Path:
    path = Path(path)
    parts = [f"# Soundness-Aware Level: {summary['model']} ({summary.get('init', 'pretrained')})\n",
             sal_block(summary),
             f"\n![rule probabilities by soundness]({relative_link(figures['histograms'], path.parent)})\n",
             f"\n![pairwise JSD]({relative_link(figures['pairwise_jsd'], path.parent)})\n",
             "\n## Case studies (Table 2 layout)\n",
             markdown_table(case_studies(labelled, explanations, n_cases))]
    atomic.write_text(path, "\n".join(parts))
    return path
