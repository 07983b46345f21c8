"""Fork server for the kill -9 tests: runs train.py / extract_rules.py / evaluate.py as they
run from a shell, but forked from a process that has imported torch, Lightning, transformers
and sal once, so that each of the suite's ~40 stage runs starts in a fraction of a second
instead of ~10 s.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.

    {"script": "train.py", "args": [...], "env": {"SAL_KILL_AT": "train.step@13"},
     "log": "/path/to/log", "patches": ["varied_judge"], "timeout": 300}
    -> {"returncode": -9, "seconds": 2.1}

The child runs the script with ``runpy`` as ``__main__`` (so Hydra finds its config and
Lightning relaunches it for extra DDP ranks exactly as from a shell), its output in ``log``,
in its own process group (a timeout kills every process it started). ``returncode`` is the
exit status, or minus the signal that ended it (-9: SIGKILL, i.e. a kill point fired).

Patches (test scaffolding applied in the child before the script runs):
- ``varied_judge``: the hf_local judge's answer scores come from a hash of prompt and answer
  (a random model scores every rule alike, and SAL would not be computable: the demo test
  does the same);
- ``kill_point_on_judge_cache``: a kill point ``judge.cache_put`` after every answer the
  judge stores in its cache (to kill a stage in the middle of judging).

Parent process and children never run a torch computation before forking: the fork happens
from a process with no threads and no OpenMP pool.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _preload() -> None:
    import hydra  # noqa: F401
    import lightning  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import scipy.sparse  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    import sal.cli  # noqa: F401
    import sal.feature_explanations  # noqa: F401
    import sal.features  # noqa: F401
    import sal.judge  # noqa: F401
    import sal.judge.hf_local  # noqa: F401
    import sal.models  # noqa: F401
    import sal.pipeline.evaluate  # noqa: F401
    import sal.pipeline.extract  # noqa: F401
    import sal.pipeline.train  # noqa: F401
    import sal.rule_judging  # noqa: F401
    import sal.rules  # noqa: F401
    import sal.top_spans  # noqa: F401
    import sal.training.run  # noqa: F401


def _patch_varied_judge() -> None:
    import hashlib

    from sal.judge.hf_local import HFLocalJudge

    def varied_scores(self, prompts, prefix, choices):
        return [[hashlib.sha256((p + c).encode()).digest()[0] / 255 for c in choices] for p in prompts]

    HFLocalJudge._choice_logliks = varied_scores


def _patch_kill_point_on_judge_cache() -> None:
    from sal.faults import kill_point
    from sal.judge.cache import JudgeCache

    put = JudgeCache.put

    def put_then_maybe_die(self, key, record):
        put(self, key, record)
        kill_point("judge.cache_put")

    JudgeCache.put = put_then_maybe_die


PATCHES = {"varied_judge": _patch_varied_judge, "kill_point_on_judge_cache": _patch_kill_point_on_judge_cache}


def _child(req: dict) -> None:
    import runpy

    os.setpgrp()
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code = 0
    try:
        import torch

        os.environ.update(req.get("env") or {})
        # One thread (and so for the DDP ranks it starts): on a small shared machine OpenMP
        # workers spinning against other processes make a tiny model's steps 10x slower.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
        os.chdir(req.get("cwd") or ROOT)
        for name in req.get("patches") or []:
            PATCHES[name]()
        script = str(ROOT / req["script"])
        sys.argv = [script, *req["args"]]
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 124
        time.sleep(0.02)


def _reap_group(pid: int) -> None:
    """Whatever the stage left running (a DDP rank whose parent was killed) goes too."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(req)
        code = _wait(pid, float(req.get("timeout", 300)))
        _reap_group(pid)
        print(json.dumps({"returncode": code, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
