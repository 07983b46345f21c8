"""Kill points: where a test may SIGKILL a stage, to prove that a rerun resumes exactly.

``kill_point(name, tag)`` does nothing unless the environment variable ``SAL_KILL_AT``
names that point; then the process sends itself SIGKILL there: no exception, no ``finally``,
no flush, no atexit — what a kill -9, an OOM killer or a lost node does. The specification is
read once per process (a forked or launched child reads its own).

``SAL_KILL_AT`` is a comma-separated list of ``point[@tag][:N]``: kill the N-th time (default
the first) that ``point`` is reached in this process, counting only the calls whose tag is
``tag`` when one is given. Examples: ``generate.batch:3`` (after the third finished batch),
``atomic.before_rename@sal.json`` (sal.json written to its temporary, not yet renamed),
``train.step@15`` (after optimiser step 15), ``shard.premises@rank1`` (rank 1's phase-1 file
written; rank 0 goes on).

Points (tag in brackets):

- ``atomic.before_rename`` [the artifact's file or directory name] — every artifact written
  through ``sal.atomic`` (Parquet, JSON, NPZ, Markdown, figures, the crosscoder export, the
  Lightning checkpoint): complete under its temporary name, not yet moved onto the final one.
- ``generate.batch`` [batch index] — corpus generation, a batch's responses written.
- ``cache.shard`` [shard file name] — activation cache, a shard written (in the temporary
  directory); ``cache.before_rename`` [cache directory name] — all shards and index.json
  written, the directory not yet renamed into place.
- ``train.step`` [optimiser steps done] — crosscoder training, an optimiser step finished
  (checkpoints fall on ``optim.checkpoint_every_n_steps``).
- ``features.batch`` [the pass's description: ``feature pass (corpus)``, ``feature pass
  (rule set)``] — a batch of the feature pass computed.
- ``interpret.explained`` — features explained, not yet verified; ``interpret.judged`` —
  explained and verified, nothing written yet.
- ``judge_rules.start`` / ``judge_rules.done`` — rule labelling about to ask the judge /
  answered, nothing written yet.
- ``count.chunk`` [premises|conclusions] — numpy counting engine, a chunk of samples counted;
  ``count.spill`` — a partial table spilled to disk.
- ``native.block`` [count|write] — native counting kernel, a block of first premises done.
- ``shard.premises`` / ``shard.rules`` [rank<r>] — sharded counting, a rank's phase-1 /
  phase-2 file written.

tests/pipeline/test_kill9.py kills every stage at these points and checks that the rerun
ends with the outputs of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

ENV = "SAL_KILL_AT"

_pid: Optional[int] = None
_specs: list[tuple[str, Optional[str], int]] = []
_hits: dict[tuple[str, Optional[str]], int] = {}


def parse(spec: str) -> list[tuple[str, Optional[str], int]]:
    """``"a@t:2,b"`` -> ``[("a", "t", 2), ("b", None, 1)]``."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        nth = 1
        head, sep, count = part.rpartition(":")
        if sep and count.isdigit():
            part, nth = head, int(count)
        name, _, tag = part.partition("@")
        if not name or nth < 1:
            raise ValueError(f"{ENV}={spec!r}: each entry is point[@tag][:N] with N >= 1")
        out.append((name, tag or None, nth))
    return out


def _load() -> None:
    global _pid, _specs
    _pid = os.getpid()
    _specs = parse(os.environ.get(ENV, ""))
    _hits.clear()


def kill_point(name: str, tag: object = None) -> None:
    """SIGKILL this process here if ``SAL_KILL_AT`` says so (see the module docstring)."""
    if _pid != os.getpid():
        _load()
    if not _specs:
        return
    tag = None if tag is None else str(tag)
    for point, want_tag, nth in _specs:
        if point != name or (want_tag is not None and want_tag != tag):
            continue
        key = (point, want_tag)
        _hits[key] = _hits.get(key, 0) + 1
        if _hits[key] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
