"""evaluate.py: rules -> judged sample -> SAL with CI and p-value (and ΔSAL against a null
twin); or the cross-model analysis (compare), the seed and settings analysis (robustness,
sal.pipeline.robustness), the trained-network validation (validate), the planted-counts check
(planted) and the judge budget (power)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from sal import atomic
from sal.config.schema import SALConfig
from sal.errors import ConfigError, MissingInputError
from sal.pipeline import steps
from sal.pipeline.common import resolved_container, save_resolved_config, setup
from sal.pipeline.inputs import check_against_training

log = logging.getLogger("sal")

JUDGE_REPORT = "judge_report.json"
"""The tally (items, tokens, cost, problems) of the run that judged evaluate/labelled_rules.parquet."""


def run(cfg: DictConfig):
    typed, run_dir = setup(cfg)
    if typed.analysis.name == "single":
        check_against_training(typed, run_dir / "crosscoder", "evaluate.py")
    save_resolved_config(cfg, typed, run_dir / "config" / f"evaluate_{typed.analysis.name}.yaml")
    from sal.pipeline.robustness import run_robustness

    handler = {"single": run_single, "compare": run_compare, "validate": run_validate, "planted": run_planted,
               "power": run_power,
               "robustness": run_robustness}
    name = typed.analysis.name
    if name == "robustness" and not typed.run_dir:
        # One model's dictionaries: beside that model's runs.
        run_dir = Path(typed.paths.runs_root) / typed.model.name / f"robustness-{typed.run_name}"
        run_dir.mkdir(parents=True, exist_ok=True)
    elif name != "single" and not typed.run_dir:
        # Cross-model and synthetic analyses belong to no single model's run directory.
        run_dir = Path(typed.paths.runs_root) / "_analysis" / name / typed.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
    return handler[name](typed, run_dir, resolved_container(cfg, typed))


# --------------------------------------------------------------------------- single model
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


def enforce_min_rules(probs: Dict[str, np.ndarray], min_rules: int, policy: str) -> Dict[str, np.ndarray]:
    """Treat categories with fewer than ``min_rules`` labelled rules as empty (see
    evaluate.min_rules_per_category); with policy 'error', stop and say how to fix it."""
    thin = {k: len(v) for k, v in probs.items() if 0 < len(v) < min_rules}
    if thin and policy == "error":
        raise ConfigError(
            f"Too few labelled rules in {thin} (< evaluate.min_rules_per_category={min_rules}) for a histogram: "
            f"label more rules (evaluate.n_rules_per_arity) or set evaluate.empty_category=drop.")
    if thin:
        log.warning("Dropping categories with too few labelled rules: %s", thin)
    return {k: (v[:0] if k in thin else v) for k, v in probs.items()}


def answered_rules(run_dir: Path) -> pd.DataFrame:
    """A run's judged sample, the rules the judge labelled (judge_status ok)."""
    labelled = pd.read_parquet(Path(run_dir) / "evaluate" / "labelled_rules.parquet")
    return labelled[labelled.judge_status == "ok"]


def sample_probs(answered: pd.DataFrame, ev: dict) -> Dict[str, np.ndarray]:
    """Labelled rules as rule probabilities by category, with categories under
    ``ev["min_rules_per_category"]`` emptied (``ev``: the evaluate settings, as a dict)."""
    from sal import metrics

    by_category = metrics.probs_by_category_from_frame(answered, categories=ev["categories"])
    return enforce_min_rules(by_category, ev["min_rules_per_category"], "drop")


def judged_probs(run_dir: Path, ev: dict) -> Dict[str, np.ndarray]:
    """A run's judged sample as ``sample_probs``."""
    return sample_probs(answered_rules(run_dir), ev)


def delta_to_null_twin(model_probs: Dict[str, np.ndarray], null_dir: Path, ev: dict,
                       null_probs: Dict[str, np.ndarray] | None = None) -> dict:
    """ΔSAL = SAL(model) - SAL(null twin) with its bootstrap CI and one-sided p-value
    (sal.metrics.delta_sal), both sides under the model run's evaluate settings ``ev``
    (``null_probs``: the twin's judged sample when the caller has read it already);
    {"delta": None, "not_computable": why} when a side has fewer than two categories."""
    from sal import metrics

    if null_probs is None:
        null_probs = judged_probs(null_dir, ev)
    try:
        d = metrics.delta_sal(model_probs, null_probs, bins=ev["bins"], n_bootstrap=ev["n_bootstrap"],
                              n_permutations=ev["n_permutations"], ci_level=ev["ci_level"], seed=ev["seed"])
    except ValueError as err:
        return {"delta": None, "not_computable": str(err), "null_run_dir": str(null_dir)}
    return {**d.to_dict(), "null_run_dir": str(null_dir)}


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


def human_agreement(path: str, explanations: pd.DataFrame, judge) -> dict:
    """Judge the human-labelled rules too and compare (raw agreement, Cohen's kappa)."""
    from sal.interpret import agreement, judge_rules

    human = pd.read_csv(path)
    if "p2" not in human.columns:
        human["p2"] = -1
    human["p2"] = human["p2"].fillna(-1).astype(int)
    judged = judge_rules(human[["p1", "p2", "q"]].astype(int), explanations, judge)
    agr = agreement(human, judged)
    return {"n": agr.n, "raw_agreement": agr.raw_agreement, "kappa": agr.kappa, "n_unmatched": agr.n_unmatched,
            "confusion": agr.confusion.to_dict()}


def _judge_for(cfg: SALConfig, run_dir: Path):
    from sal.judge import make_judge

    loader = None
    if cfg.judge.backend == "hf_local":
        from sal.models import load_named_model

        loader = lambda: load_named_model(cfg.judge.hf_model or cfg.model.name,  # noqa: E731
                                          dtype=cfg.judge.hf_dtype, device=cfg.judge.hf_device)
    return make_judge(cfg.judge, run_dir=run_dir, loader=loader)


def run_single(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    from sal import metrics, plots
    from sal.interpret import judge_rules
    from sal.report import write_model_report
    from sal.tracking import log_images, start_run

    rules_path, expl_path = run_dir / "rules" / "rules.parquet", run_dir / "features" / "explanations.parquet"
    for p in (rules_path, expl_path):
        if not p.exists():
            raise MissingInputError(f"{p} not found: run `python extract_rules.py` with the same model and "
                                    f"run_name first (or point run_dir= at a finished run).")
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
    if not rejudge:
        labelled = pd.read_parquet(labelled_step.output)
    else:
        labelled_step.forget()
        labelled = judge_rules(sample, explanations, judge)
        atomic.write_json(out / JUDGE_REPORT, judge.report.to_dict())
        atomic.write_parquet(labelled, labelled_step.output)
        labelled_step.record()

    ok = labelled[labelled.judge_status == "ok"]
    probs = metrics.probs_by_category_from_frame(ok, categories=cfg.evaluate.categories)
    probs = enforce_min_rules(probs, cfg.evaluate.min_rules_per_category, cfg.evaluate.empty_category)
    reason = not_computable_reason(probs, cfg.evaluate.min_rules_per_category, rules, explained, frame)
    if reason and cfg.evaluate.empty_category == "drop":
        return _write_not_computable(cfg, run_dir, reason, ok, labelled, frame, judge, resolved)
    if reason:
        raise ConfigError(f"{reason} Label more rules (evaluate.n_rules_per_arity), or set evaluate.empty_category=drop "
                          f"to record the run as not computable (sal: null).")
    result = metrics.evaluate_sal(
        probs, bins=cfg.evaluate.bins, report_bins=cfg.evaluate.report_bins, n_bootstrap=cfg.evaluate.n_bootstrap,
        n_permutations=cfg.evaluate.n_permutations, ci_level=cfg.evaluate.ci_level, seed=cfg.evaluate.seed,
        drop_empty=cfg.evaluate.empty_category == "drop")
    summary = _run_summary(cfg, run_dir, ok, labelled, frame, judge, resolved, **result.to_dict())
    if null_dir is not None:
        summary["delta_sal"] = delta_to_null_twin(probs, null_dir, dataclasses.asdict(cfg.evaluate))
    if cfg.evaluate.human_labels:
        summary["human_agreement"] = human_agreement(cfg.evaluate.human_labels, explanations, judge)
        h = summary["human_agreement"]
        print(f"[evaluate] agreement with human labels on {h['n']} rules: raw {h['raw_agreement']:.3f}, "
              f"Cohen's kappa {h['kappa']:.3f}")
    figures = {
        "histograms": plots.plot_category_histograms(probs, out / "fig2_histograms.png", bins=cfg.evaluate.bins,
                                                      title=f"{cfg.model.name}: rule probability by soundness"),
        "pairwise_jsd": plots.plot_pairwise_jsd(result.pairwise, out / "fig3_pairwise_jsd.png", sal=result.sal),
    }
    report = write_model_report(out / "report.md", summary, labelled, explanations, figures,
                                n_cases=cfg.evaluate.n_case_studies)
    # One sal.json, at the run directory's top level, where compare and the demo report look;
    # written last: it is what says "evaluated".
    atomic.write_json(run_dir / "sal.json", summary)
    sal_step.record()
    wb = start_run(cfg.logger, run_dir, f"{cfg.model.name}-sal", "evaluate", resolved)
    if wb is not None:
        delta = summary.get("delta_sal") or {}
        wb.log({"sal/bits": result.sal, "sal/p_value": result.p_value, "sal/ci_low": result.ci[0],
                "sal/ci_high": result.ci[1], **{f"sal/jsd_{k}": v for k, v in result.pairwise.items()},
                **({"sal/delta": delta["delta"], "sal/delta_ci_low": delta["ci"][0],
                    "sal/delta_ci_high": delta["ci"][1], "sal/delta_p_value": delta["p_value"]}
                   if delta.get("delta") is not None else {})})
        log_images(wb, figures)
        wb.finish()
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
    print(f"[evaluate] {judge.report.summary()}")
    print(f"[evaluate] report: {report}")
    return summary


def _all_answered(labelled_path: Path) -> bool:
    """A judged sample with failed requests is judged again (the answered items come from
    the judge's cache), so a rerun after a server outage completes it."""
    labelled = pd.read_parquet(labelled_path, columns=["judge_status"])
    failed = int((labelled.judge_status == "failed").sum())
    if failed:
        log.warning("judged rule sample: judging again: %d of %d requests failed last time", failed, len(labelled))
    return failed == 0


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


def _run_summary(cfg: SALConfig, run_dir: Path, ok: pd.DataFrame, labelled: pd.DataFrame, frame: dict, judge,
                 resolved: dict, **result) -> dict:
    """sal.json's content: which run, the SAL result (or why there is none), the judged sample."""
    return {
        "model": cfg.model.name, "init": cfg.model.init, "run_dir": str(run_dir),
        **result,
        "sampling_frame": frame,
        "judge_label_counts": {c: int((ok.category == c).sum()) for c in cfg.evaluate.categories},
        "n_labelled": int(len(ok)), "n_unlabelled": int(len(labelled) - len(ok)),
        "judge": {"backend": cfg.judge.backend, "model": judge.report.model, "report": _judge_report(judge, run_dir)},
        "config": resolved,
    }


def _judge_report(judge, run_dir: Path) -> dict:
    """This run's judge tally; when the judged sample was reused (nothing asked this time),
    the tally of the run that judged it, marked as such."""
    saved = run_dir / "evaluate" / JUDGE_REPORT
    if judge.report.n_items == 0 and saved.exists():
        return {**json.loads(saved.read_text()), "from_earlier_run": True}
    return judge.report.to_dict()


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


# --------------------------------------------------------------------------- compare
def collect_sal(cfg: SALConfig) -> Dict[str, float]:
    """{model: SAL} from run directories, a multirun folder, or a CSV (``paper`` = packaged)."""
    from sal.analysis import load_paper_sal

    a = cfg.analysis
    found: Dict[str, float] = {}
    dirs: List[Path] = [Path(d) for d in a.run_dirs]
    if a.multirun_dir:
        dirs += sorted(p.parent for p in Path(a.multirun_dir).rglob("sal.json"))
    for d in dirs:
        path = d / "sal.json"
        if not path.exists():
            raise MissingInputError(f"{path} missing: run `python evaluate.py run_dir={d}` first.")
        s = json.loads(path.read_text())
        value, why = _metric_of(s, a.metric, path)
        if value is None:
            log.warning("%s: no %s (%s); left out of the comparison", path, a.metric, why)
            continue
        found[s["model"] if s.get("init", "pretrained") == "pretrained" else f"{s['model']}-{s['init']}"] = value
    if a.sal_csv and not dirs:
        if a.sal_csv == "paper":
            found.update(load_paper_sal())
        else:
            table = pd.read_csv(a.sal_csv)
            found.update(dict(zip(table["model"], table["sal"].astype(float))))
    return found


def _metric_of(summary: dict, metric: str, path: Path) -> tuple[float | None, str]:
    """(value, why it is missing) of ``metric`` (sal | delta_sal) in one run's sal.json."""
    if summary.get("sal") is None:
        return None, summary.get("not_computable", "not computed")
    if metric == "sal":
        return summary["sal"], ""
    delta = summary.get("delta_sal")
    if delta is None:
        raise MissingInputError(f"{path} has no ΔSAL: evaluate that run with evaluate.null_twin=<its null twin's "
                                f"run> (made with control=null_twin), or compare with analysis.metric=sal.")
    return delta["delta"], delta.get("not_computable", "")


def run_compare(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    from sal import analysis, plots
    from sal.report import write_compare_report

    sal_by_model = collect_sal(cfg)
    metric = cfg.analysis.metric
    if metric == "delta_sal" and any(v <= 0 for v in sal_by_model.values()):
        raise ConfigError(f"ΔSAL <= 0 for {sorted(k for k, v in sal_by_model.items() if v <= 0)}: the fit "
                          f"eps = exp(-alpha * s^beta) needs s > 0. Those models separate sound rules no better than "
                          f"their null twins; leave them out of analysis.run_dirs or compare with analysis.metric=sal.")
    comp = analysis.compare(sal_by_model, accuracy=cfg.analysis.accuracy_csv,
                            accuracy_column=cfg.analysis.accuracy_column, benchmarks=cfg.analysis.benchmarks)
    out = run_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    summary = {**comp.summary(), "metric": metric}
    atomic.write_json(out / "compare.json", summary)
    comp.table.to_csv(out / "sal_vs_accuracy.csv", index=False)
    comp.spearman.to_csv(out / "spearman_table1.csv", index=False)
    label = "ΔSAL vs null twin" if metric == "delta_sal" else "SAL"
    figures = {"fig4": plots.plot_sal_vs_accuracy(comp, out / "fig4_sal_vs_accuracy.png", label=label),
               "fig5": plots.plot_sal_scale_family(sal_by_model, out / "fig5_scale_family.png")}
    report = write_compare_report(out / "report.md", comp, figures, label=label)
    fit = comp.fit
    print(f"[compare] {len(comp.table)} models, s = {label}: eps = exp(-alpha * s^beta), alpha = {fit.alpha:.3f}, "
          f"beta = {fit.beta:.3f}, R^2 = {fit.r2:.3f}, leave-one-out R^2 = " + (f"{comp.loo.r2:.3f}" if comp.loo is not None else "n/a (3 models)"))
    print(comp.spearman.to_string(index=False))
    print(f"[compare] report: {report}")
    return summary


# --------------------------------------------------------------------------- validate
def run_validate(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    """SAL through real networks: tiny transformers trained on a language with planted
    implications vs on the same text shuffled (sal.network_validation)."""
    from sal import network_validation

    net = cfg.analysis.network
    out = run_dir / "validate"
    figures_to = None
    if net.figures_dir:
        figures_to = Path(net.figures_dir)
        if not figures_to.is_absolute():  # relative to the repository, not to Hydra's working directory
            figures_to = Path(__file__).resolve().parents[2] / figures_to
    summary = network_validation.run_network_validation(net, out, figures_to=figures_to)
    table = pd.read_csv(out / "per_seed.csv")
    print(network_validation.format_table(table))
    verdict = "holds" if summary["ordering_holds_all_seeds"] else "does NOT hold"
    print(f"[validate] sound > shuffled in SAL and delta-SAL on every seed: {verdict} ({summary['ordering']}); "
          f"{summary['seconds']:.0f} s on CPU capability {summary['cpu_capability']}")
    print(f"[validate] wrote {out / 'summary.json'}, figures {list(summary['figures'].values())}"
          + (f", copied to {figures_to}" if figures_to else ""))
    return summary


def run_planted(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    """The planted-counts check: layer counts written in the rule counter's own form
    (sal.synthetic), so it tests the counting-and-SAL plumbing, not the method."""
    from sal import plots, synthetic
    from sal.interpret import judge_rules
    from sal.judge import make_judge

    out = run_dir / "validate"
    world = synthetic.generate_world(cfg.world)
    paths = synthetic.save_world(world, out / "world")
    rules = synthetic.count_world_rules(world)
    planted = world.planted[["p1", "p2", "q"]]
    to_label = rules.merge(planted, on=["p1", "p2", "q"], how="inner")
    # The replay judge answers from the world's ground-truth file, through the same
    # judge_rules path a real run uses; planted features get placeholder explanations.
    feats = set(planted.p1) | set(planted.q) | set(planted.p2[planted.p2 >= 0])
    explanations = {int(f): f"planted feature {int(f)}" for f in feats}
    replay = dataclasses.replace(cfg.judge, backend="replay", replay_path=str(paths["labels"]), cache_dir=None)
    labelled = judge_rules(to_label, explanations, make_judge(replay), progress=False)
    labelled = labelled[labelled.judge_status == "ok"]
    val = synthetic.validate_world(world, rules=to_label, labels=labelled, bins=cfg.evaluate.bins,
                                   n_bootstrap=cfg.evaluate.n_bootstrap, n_permutations=cfg.evaluate.n_permutations,
                                   ci_level=cfg.evaluate.ci_level, seed=cfg.evaluate.seed)
    sweep = synthetic.separation_sweep(cfg.world, cfg.analysis.separations, cfg.analysis.n_seeds,
                                       bins=cfg.evaluate.bins, n_bootstrap=200, n_permutations=200)
    sweep.to_csv(out / "separation_sweep.csv", index=False)
    fig = plots.plot_validation(sweep, out / "validation.png")
    summary = {"world": dataclasses.asdict(cfg.world), "sal": val.sal.to_dict(),
               "recovery": val.recovery._asdict(), "sweep": sweep.to_dict(orient="records")}
    atomic.write_json(out / "validate.json", summary)
    r = val.sal
    print(f"[validate] world={cfg.world.mode} separation={cfg.world.separation}: SAL = {r.sal:.4f} bits "
          f"[CI {r.ci[0]:.4f}, {r.ci[1]:.4f}], p = {r.p_value:.4f}; recovery: {val.recovery}")
    print(sweep.groupby("separation")[["sal", "p_value"]].mean().to_string())
    print(f"[validate] figure: {fig}")
    return summary


# --------------------------------------------------------------------------- power
def tokens_per_judgment(run_dirs) -> float | None:
    """Mean prompt + completion tokens per request that the runs' judges tallied (None when
    no request reported usage, e.g. every answer came from the cache)."""
    tokens = requests = 0
    for d in run_dirs:
        path = Path(d) / "sal.json"
        if path.exists():
            rep = json.loads(path.read_text()).get("judge", {}).get("report", {})
            tokens += rep.get("prompt_tokens", 0) + rep.get("completion_tokens", 0)
            requests += rep.get("n_requests", 0) - rep.get("n_missing_usage", 0)
    return tokens / requests if requests > 0 and tokens > 0 else None


def run_power(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    from sal import plots, power, synthetic

    p = cfg.analysis.power
    shares = pool_b = None
    if p.source == "run":
        labelled = pd.concat([pd.read_parquet(Path(d) / "evaluate" / "labelled_rules.parquet")
                              for d in cfg.analysis.run_dirs])
        pool, shares = power.pool_from_rules(labelled[labelled.judge_status == "ok"])
    else:
        pool = synthetic.rule_pool(synthetic.generate_world(cfg.world))
        if p.compare_separation is not None:
            other = dataclasses.replace(cfg.world, separation=p.compare_separation, seed=cfg.world.seed + 1)
            pool_b = synthetic.rule_pool(synthetic.generate_world(other))
    tokens = p.tokens_per_judgment
    if tokens is None and p.source == "run":
        tokens = tokens_per_judgment(cfg.analysis.run_dirs)
    result = power.power_analysis(pool, pool_b, delta=p.delta, n_grid=p.n_grid, n_sim=p.n_sim, n_bootstrap=p.n_bootstrap,
                                  bins=cfg.evaluate.bins, alpha=p.alpha, target_power=p.target_power,
                                  ci_level=cfg.evaluate.ci_level, seed=cfg.evaluate.seed,
                                  tokens_per_judgment=tokens, price_per_1k_tokens=p.price_per_1k_tokens,
                                  category_shares=shares)
    out = run_dir / "power"
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "power_table.csv", index=False)
    fig = plots.plot_power(result, out / "power.png")
    atomic.write_text(out / "recommendation.txt", result.recommendation + "\n")
    print(result.table.to_string(index=False))
    print(f"[power] {result.recommendation}")
    print(f"[power] figure: {fig}")
    return {"n_required": result.n_required, "recommendation": result.recommendation}
