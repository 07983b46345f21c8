"""The demo's report (python -m sal.demo): the subject model beside its null twin, ΔSAL
first, and the wall time of every stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from sal import atomic
from sal.markdown import format_ci, relative_link, sal_block


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
    from sal.pipeline.analyses.judged_sample import delta_to_null_twin, judged_probs

    summary = json.loads((model_dir / "sal.json").read_text())
    d = summary.get("delta_sal")
    if d is None:
        ev = summary["config"]["evaluate"]
        d = delta_to_null_twin(judged_probs(model_dir, ev), null_dir, ev)
    if d["delta"] is None:
        return f"| **ΔSAL (model − null twin)** | not computable | — | — | {d['not_computable']} |"
    return (f"| **ΔSAL (model − null twin)** | **{d['delta']:.4f}** | {format_ci(d['ci'])} | {d['p_value']:.4f} "
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
            parts.append(f"| {label} | {s['sal']:.4f} | {format_ci(s['ci'])} | {s['p_value']:.4f} | {s['counts']} |")
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
                   f"![histograms]({relative_link(ev / 'fig2_histograms.png', path.parent)})\n",
                   f"![pairwise JSD]({relative_link(ev / 'fig3_pairwise_jsd.png', path.parent)})\n",
                   f"Full report: [{relative_link(ev / 'report.md', path.parent)}]({relative_link(ev / 'report.md', path.parent)})\n"]
    if timings:
        blocks += ["\n" + format_timings(timings, total_s if total_s is not None else sum(t for *_, t in timings),
                                         hardware or "unrecorded hardware")]
    atomic.write_text(path, "\n".join(parts + blocks))
    return path
