"""Interpret the crosscoder's features and count 1-/2-premise Horn-clause rules.

    python extract_rules.py [key=value ...]      (Hydra; add -m for sweeps, --cfg job to print)
"""

import hydra
from omegaconf import DictConfig

from sal.config.schema import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="extract_rules")
def main(cfg: DictConfig):
    from sal.cli import stage_main

    return stage_main("extract_rules.py", "sal.pipeline.extract", cfg)


if __name__ == "__main__":
    from sal.cli import before_hydra

    before_hydra("extract_rules.py")
    main()
