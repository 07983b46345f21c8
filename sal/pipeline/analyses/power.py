"""analysis=power: the judge budget. SAL's CI width and the power to detect a SAL
difference against the number of rules labelled per category (sal.power), on a planted
world or on a finished run's judged sample, with the tokens and cost it takes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from sal import atomic
from sal.config.schema import SALConfig


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
