"""analysis=compare: SAL (or ΔSAL) of many runs against post-RL accuracy: the exp-power fit
eps = exp(-alpha * s^beta), its leave-one-out check, the Spearman table (sal.analysis),
Figures 4 and 5 and the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Mapping

import numpy as np
import pandas as pd

from sal import atomic
from sal.config.schema import SALConfig
from sal.errors import ConfigError, MissingInputError
from sal.markdown import markdown_table, relative_link
from sal.tracking_tables import log_compare

log = logging.getLogger("sal")


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
    report_path = write_compare_report(out / "report.md", comp, figures, label=label)
    fit = comp.fit
    print(f"[compare] {len(comp.table)} models, s = {label}: eps = exp(-alpha * s^beta), alpha = {fit.alpha:.3f}, "
          f"beta = {fit.beta:.3f}, R^2 = {fit.r2:.3f}, leave-one-out R^2 = " + (f"{comp.loo.r2:.3f}" if comp.loo is not None else "n/a (3 models)"))
    print(comp.spearman.to_string(index=False))
    print(f"[compare] report: {report_path}")
    log_compare(cfg, run_dir, resolved, comp, figures)
    return summary


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
        markdown_table(table.round(4)),
        "\n## Spearman correlation (Table 1 layout)\n",
        markdown_table(comp.spearman),
        f"\n![Figure 4]({relative_link(figures['fig4'], path.parent)})\n",
        f"\n![Figure 5]({relative_link(figures['fig5'], path.parent)})\n",
    ]
    if comp.unmatched:
        parts.append(f"\nModels without an accuracy entry (left out): {comp.unmatched}\n")
    atomic.write_text(path, "\n".join(parts))
    return path
