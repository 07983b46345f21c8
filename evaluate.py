"""Judge sampled rules and compute the Soundness-Aware Level; or compare models, validate, size the judge budget.

    python evaluate.py [key=value ...]      (Hydra; add -m for sweeps, --cfg job to print)
"""

import hydra
from omegaconf import DictConfig

from sal.config.schema import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig):
    from sal.cli import stage_main

    return stage_main("evaluate.py", "sal.pipeline.evaluate", cfg)


if __name__ == "__main__":
    from sal.cli import before_hydra

    before_hydra("evaluate.py")
    main()
