"""What the three entrypoints share: check the config first, run the stage, and turn a
mistake the user can fix (sal.errors.UserError) into one readable message and exit status 2.

A wrong setting is reported before the stage's own modules (and torch, pandas, the subject
model) are imported, so it costs seconds, not minutes. A traceback is for our bugs, not the
user's typos: ``HYDRA_FULL_ERROR=1`` or ``SAL_DEBUG=1`` shows it for user errors too.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any, Iterator

from omegaconf import DictConfig

from sal.errors import UserError

EXIT_USER_ERROR = 2


def debugging() -> bool:
    return any(os.environ.get(var, "").strip() not in ("", "0") for var in ("HYDRA_FULL_ERROR", "SAL_DEBUG"))


def print_user_error(err: UserError, stage: str) -> None:
    print(f"{stage}: error: {err}", file=sys.stderr, flush=True)


def startup_checks(stage: str, cfg) -> None:
    """What each stage will need, checked from the config alone (sal.preflight): the subject
    model's weights for the stages that run it, the judge (key, server) for those that ask it."""
    from sal.preflight import check_judge, check_model

    if stage == "extract_rules.py":  # train.py checks its model after its training plan (sal.pipeline.train)
        check_model(cfg.model)
    if stage == "extract_rules.py" or stage == "evaluate.py" and cfg.analysis.name == "single":
        check_judge(cfg.judge, cfg.model)


@contextlib.contextmanager
def user_errors(stage: str) -> Iterator[None]:
    """A UserError inside the block ends the process with its message alone (status 2)."""
    try:
        yield
    except UserError as err:
        if debugging():
            raise
        print_user_error(err, stage)
        sys.exit(EXIT_USER_ERROR)


def before_hydra(stage: str) -> None:
    """Checks on the raw command line, before Hydra saves it under the run directory: a key
    pasted where the name of its environment variable belongs is refused unsaved, and a value
    outside a field's choices is reported as one line (Hydra would refuse it too, at length)."""
    from sal.config.choices import override_choice_problem
    from sal.config.schema import SALConfig
    from sal.errors import ConfigError
    from sal.judge.secrets import check_overrides

    with user_errors(stage):
        check_overrides(sys.argv[1:])
        for arg in sys.argv[1:]:
            problem = override_choice_problem(SALConfig, arg)
            if problem:
                raise ConfigError(problem)


def stage_main(stage: str, module: str, cfg: DictConfig) -> Any:
    """Validate ``cfg`` (once: the stage gets the typed config) and run the start-up checks,
    then ``<module>.run(cfg, typed)``."""
    from sal.config.schema import validate_config

    scrub_saved_configs()
    with user_errors(stage):
        typed = validate_config(cfg)  # here, before the stage's heavy imports, a bad setting costs seconds
        startup_checks(stage, typed)
        return importlib.import_module(module).run(cfg, typed)


def scrub_saved_configs() -> None:
    """Hydra has saved the composed config: if a config file (not the command line, refused
    before) put a key where a variable name belongs, it must not stay on disk."""
    from hydra.core.hydra_config import HydraConfig

    from sal.judge.secrets import scrub_saved_configs as scrub

    try:
        output_dir = HydraConfig.get().runtime.output_dir
    except ValueError:  # not under Hydra
        return
    scrub(output_dir)
