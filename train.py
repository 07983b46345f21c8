"""Train the crosscoder on the subject model's residual stream (builds the corpus first).

    python train.py [key=value ...]      (Hydra; add -m for sweeps, --cfg job to print)
"""

import hydra
from omegaconf import DictConfig

from sal.config.schema import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from sal.cli import stage_main

    return stage_main("train.py", "sal.pipeline.train", cfg)


if __name__ == "__main__":
    from sal.cli import before_hydra

    before_hydra("train.py")
    main()
