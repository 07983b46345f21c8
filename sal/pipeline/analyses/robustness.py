"""evaluate.py analysis=robustness: the whole pipeline for K crosscoder seeds and for other
dictionary sparsities and widths (each run beside its null twin), then SAL's and ΔSAL's seed
spread and the sensitivity table and figure.

The runs are Hydra multiruns of the three entrypoints (one sweep per stage over
``crosscoder.seed``, ``crosscoder.target_l0`` or ``crosscoder.n_features``), run by
``python -m sal.pipeline.sweep`` in a child process (a Hydra app cannot start another in its
own process). Each job's directory is ``<analysis dir>/runs/<tag><value>[_null]``; the
fingerprints make a rerun after an interruption redo only what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
import pandas as pd

from sal import atomic
from sal.config.schema import SALConfig
from sal.errors import MissingInputError
from sal.markdown import format_ci, markdown_table, relative_link
from sal.pipeline.analyses.judged_sample import answered_rules, delta_to_null_twin, sample_probs
from sal.pipeline.common import REPO_ROOT

log = logging.getLogger("sal")
STAGES = ("train.py", "extract_rules.py", "evaluate.py")


class Sweep(NamedTuple):
    """One swept dictionary setting: its job directories are ``<tag><value>``."""

    tag: str
    key: str
    values: tuple


def sweeps(cfg: SALConfig) -> list[Sweep]:
    r = cfg.analysis.robustness
    found = [Sweep("seed", "crosscoder.seed", tuple(r.seeds))]
    if r.target_l0:
        found.append(Sweep("l0_", "crosscoder.target_l0", tuple(r.target_l0)))
    if r.n_features:
        found.append(Sweep("C", "crosscoder.n_features", tuple(r.n_features)))
    return found


def passed_overrides() -> list[str]:
    """This command's overrides that the pipeline's stages take too (not the analysis's own,
    not where this command writes)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # not in a Hydra app (tests call run_robustness directly)
        return []
    own = ("analysis", "run_dir", "run_name", "hydra.", "force")
    return [o for o in task if not o.lstrip("+~").startswith(own)]


def sweep_plan(cfg: SALConfig, runs_dir: Path, base: list[str]) -> list[tuple[str, list[str]]]:
    """(script, argv) of every multirun: per sweep, the models' train and extract, the null
    twins' three stages, then the models' evaluate (which reads its twin's judged sample)."""
    plan = []
    first_seed = cfg.analysis.robustness.seeds[0]
    for s in sweeps(cfg):
        var = f"${{{s.key}}}"
        common = ["-m", f"{s.key}={','.join(map(str, s.values))}", f"hydra.sweep.dir={runs_dir}", *base]
        if s.key != "crosscoder.seed":
            common.append(f"crosscoder.seed={first_seed}")
        model = [*common, f"hydra.sweep.subdir={s.tag}{var}"]
        null = [*common, "control=null_twin", f"hydra.sweep.subdir={s.tag}{var}_null"]
        plan += [("train.py", model), ("extract_rules.py", model)]
        if cfg.analysis.robustness.null_twin:
            plan += [(stage, null) for stage in STAGES]
            plan.append(("evaluate.py", [*model, f"evaluate.null_twin={s.tag}{var}_null"]))
        else:
            plan.append(("evaluate.py", model))
    return plan


def run_sweeps(plan: list[tuple[str, list[str]]], out: Path) -> None:
    path = out / "sweep_plan.json"
    atomic.write_json(path, [[script, argv] for script, argv in plan])
    print(f"[robustness] {len(plan)} multiruns ({path}); logs under each job's directory", flush=True)
    # From the launch directory, as the stages would run if typed: relative paths mean the same.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "sal.pipeline.sweep", str(path)], env=env)
    if done.returncode != 0:
        raise MissingInputError(f"a pipeline run of the robustness sweep failed (exit {done.returncode}); its "
                                f"error is printed above. Fix it and run the same command again: finished steps "
                                f"are kept.")


def _read(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    """A sweep job's sal.json and its judged sample's answered rules."""
    path = run_dir / "sal.json"
    if not path.exists():
        raise MissingInputError(f"{path} missing: the sweep did not finish; run the same command again.")
    return json.loads(path.read_text()), answered_rules(run_dir)


def seed_table(cfg: SALConfig, runs_dir: Path) -> tuple[pd.DataFrame, dict, dict, dict]:
    """Per seed: SAL, its CI, ΔSAL, its CI and p; the SAL and ΔSAL spreads; the judged samples."""
    from sal import robustness

    ev = dataclasses.asdict(cfg.evaluate)
    rows, sal_reps, delta_reps, samples = [], [], [], {"model": [], "null": []}
    for k in cfg.analysis.robustness.seeds:
        summary, labelled = _read(runs_dir / f"seed{k}")
        samples["model"].append(labelled)
        row = {"seed": k, "sal": summary.get("sal"), "ci_low": (summary.get("ci") or [None])[0],
               "ci_high": (summary.get("ci") or [None, None])[1], "p_value": summary.get("p_value")}
        probs = sample_probs(labelled, ev)
        try:
            point, reps = robustness.sal_and_replicates(probs, ev["bins"], ev["n_bootstrap"], ev["seed"])
            sal_reps.append((point, reps))
        except ValueError:
            log.warning("seed %s: SAL not computable; left out of the spread", k)
        if cfg.analysis.robustness.null_twin:
            null_dir = runs_dir / f"seed{k}_null"
            samples["null"].append(_read(null_dir)[1])
            null_probs = sample_probs(samples["null"][-1], ev)
            d = delta_to_null_twin(probs, null_dir, ev, null_probs)
            row |= {"delta": d["delta"], "delta_ci_low": (d.get("ci") or [None])[0],
                    "delta_ci_high": (d.get("ci") or [None, None])[1], "delta_p_value": d.get("p_value")}
            if d["delta"] is not None:
                _, null_reps = robustness.sal_and_replicates(null_probs, ev["bins"], ev["n_bootstrap"], ev["seed"] + 1)
                delta_reps.append((d["delta"], reps - null_reps))
        rows.append(row)
    spreads = {name: robustness.seed_spread([p for p, _ in reps], [r for _, r in reps], ev["ci_level"]).to_dict()
               for name, reps in (("sal", sal_reps), ("delta_sal", delta_reps)) if reps}
    return pd.DataFrame(rows), spreads, samples, ev


def sensitivity_table(cfg: SALConfig, runs_dir: Path, samples: dict, ev: dict) -> pd.DataFrame:
    """SAL and ΔSAL against bins and the judged sample's minimum premise count (the seeds'
    runs), and against target_l0 and C (the first seed's runs at other settings)."""
    from sal import robustness

    r = cfg.analysis.robustness
    with_null = r.null_twin and bool(samples["null"])
    model = [sample_probs(s, ev) for s in samples["model"]]
    null = [sample_probs(s, ev) for s in samples["null"]] if with_null else None
    rows = robustness.sensitivity_rows("bins", r.bins, [model] * len(r.bins), [null] * len(r.bins) if with_null
                                       else None, list(r.bins))
    floor = cfg.rules.min_premise_count
    restrict = lambda frames, m: [sample_probs(robustness.with_min_premise_count(f, m), ev) for f in frames]  # noqa: E731
    rows += robustness.sensitivity_rows(
        "min_premise_count", r.min_premise_counts, [restrict(samples["model"], m) for m in r.min_premise_counts],
        [restrict(samples["null"], m) for m in r.min_premise_counts] if with_null else None, ev["bins"],
        notes=[f"= extraction floor (rules.min_premise_count={floor})" if m <= floor else ""
               for m in r.min_premise_counts])
    for s in sweeps(cfg)[1:]:
        base = cfg.crosscoder.target_l0 if s.key == "crosscoder.target_l0" else cfg.crosscoder.n_features
        values, m_probs, n_probs, notes = [], [], [], []
        for v in sorted({*s.values, base} - {None}):
            if v == base:  # the seeds' runs are this setting
                values.append(v), m_probs.append(model), n_probs.append(null), notes.append("base (all seeds)")
                continue
            values.append(v), notes.append(f"seed {r.seeds[0]}")
            m_probs.append([sample_probs(_read(runs_dir / f"{s.tag}{v}")[1], ev)])
            n_probs.append([sample_probs(_read(runs_dir / f"{s.tag}{v}_null")[1], ev)] if with_null else None)
        rows += robustness.sensitivity_rows(s.key.split(".")[-1], values, m_probs, n_probs if with_null else None,
                                            ev["bins"], notes=notes)
    return pd.DataFrame(rows)


def run_robustness(cfg: SALConfig, out: Path, resolved: dict) -> dict:
    from sal import plots

    runs_dir = out.resolve() / "runs"
    run_sweeps(sweep_plan(cfg, runs_dir, passed_overrides()), out)
    seeds, spreads, samples, ev = seed_table(cfg, runs_dir)
    sensitivity = sensitivity_table(cfg, runs_dir, samples, ev)
    seeds.to_csv(out / "seeds.csv", index=False)
    sensitivity.to_csv(out / "sensitivity.csv", index=False)
    fig = plots.plot_robustness(seeds, spreads, sensitivity, out / "robustness.png")
    summary = {"model": cfg.model.name, "seeds": seeds.replace({np.nan: None}).to_dict(orient="records"),
               "spread": spreads, "sensitivity": sensitivity.replace({np.nan: None}).to_dict(orient="records"),
               "ci_level": ev["ci_level"], "bins": ev["bins"], "config": resolved}
    atomic.write_json(out / "robustness.json", summary)
    report_path = write_robustness_report(out / "report.md", summary, seeds, sensitivity, fig)
    print(report_path.read_text())
    print(f"[robustness] report: {report_path}")
    return summary


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
            f"- **{label} = {sp['mean']:.4f} bits**, {level} interval {format_ci(sp['interval'])}; variance from "
            f"rule resampling {sp['rule_var']:.2e}, from the seed spread {sp['seed_var']:.2e} "
            f"({100 * sp['seed_share']:.0f}% of the total): **{sp['dominant']} dominates**")
    parts += ["\n## Per seed\n", markdown_table(seeds.round(4).replace({np.nan: "—"})),
              "\n## Sensitivity\n",
              "Mean over the runs at each setting (sd over seeds where there are several); `rules_used`: labelled "
              "rules left after the setting's filter and the thin-category rule.\n",
              markdown_table(sensitivity.round(4).assign(value=[f"{v:g}" for v in sensitivity["value"]])),
              f"\n![robustness]({relative_link(Path(figure), path.parent)})\n"]
    atomic.write_text(path, "\n".join(parts))
    return path
