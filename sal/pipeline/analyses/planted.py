"""analysis=planted: the planted-counts check. Layer counts are written in the rule
counter's own form (sal.synthetic), so recovering the planted rules tests the counting,
judging and SAL plumbing, not the method (analysis=validate is the check through real
networks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sal import atomic
from sal.config.schema import SALConfig


def run_planted(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    """The planted-counts check: layer counts written in the rule counter's own form
    (sal.synthetic), so it tests the counting-and-SAL plumbing, not the method."""
    from sal import plots, synthetic
    from sal.judge import make_judge
    from sal.rule_judging import judge_rules

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
