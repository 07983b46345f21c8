"""Kill -9 anywhere: each stage is killed (SIGKILL, no cleanup) at kill points along its way
(sal.faults) and run again; the rerun must end with the outputs of a run never interrupted,
file for file: Parquet tables equal, NPZ arrays equal, crosscoder weights and activation
shards bit for bit, JSON equal but for wall-clock fields; no duplicate rows, no stray files.

A test is a chain: the stage is started with SAL_KILL_AT naming the first point and dies
there, started again naming the next one (it resumes from what the first run left, and dies
at the second point), ..., and finally started without one. Every run of a chain must die
at its point (returncode -9): a point a rerun never reaches would be a stage that redoes
less than it claims, or a dead kill point.

The stages run on tiny-random, forked from a process that imported everything once
(_kill9_harness.py), all in one working directory (the reference run's snapshot is copied
there before each chain), so that paths recorded in artifacts are equal too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("_kill9_harness.py")

pytestmark = pytest.mark.slow

# A sparse dictionary (fixed alpha, 128 features): ~45 explained features and ~10^4 rules,
# not the millions a dense tiny-random dictionary gives. Four activation-cache shards.
TRAIN = ["crosscoder.target_l0=null", "sparsity=100", "crosscoder.n_features=128", "optim.cache_shard_tokens=256"]
EVALUATE = ["judge.hf_model=tiny-random", "evaluate.n_rules_per_arity=20", "evaluate.min_rules_per_category=1",
            "evaluate.n_bootstrap=20", "evaluate.n_permutations=20"]
EVALUATE_PATCHES = ["varied_judge", "kill_point_on_judge_cache"]
NUMPY_ENGINE = ["rules.memory_budget_gb=1e-5", "rules.chunk_samples=8"]  # over budget for the kernel: numpy, spilling
SHARDED = ["rules.num_processes=2"]

RUN = Path("runs") / "tiny-random" / "default"
LAYER_COUNTS = "layer_counts_last_token_tau0_unfinished-include.npz"

# What each stage writes (relative to the working directory), compared with the reference.
OUTPUTS = {
    "train": ["cache/corpus", "cache/activations", f"{RUN}/crosscoder", f"{RUN}/config/train.yaml"],
    "extract": [f"{RUN}/features", f"{RUN}/rules"],
    "evaluate": [f"{RUN}/evaluate", f"{RUN}/sal.json"],
}
RULES_OUTPUTS = ["rules.parquet", "feature_counts.parquet", "aggregation.json"]

WALL_CLOCK = {"tokens_per_s", "created", "seconds", "elapsed_s", "wall_s", "n_cache_hits", "n_requests",
              "prompt_tokens", "completion_tokens"}
"""JSON fields that measure the run rather than its result (time, and how many answers came
from the judge cache, which is the point of resuming)."""

RESOURCES = {"memory_budget_gb", "chunk_samples", "num_processes", "spill_dir", "progress"}
"""rules.* settings that change how the counting runs, not its table (aggregation.json
records them; the numpy-engine and sharded chains set them on purpose)."""


def _comparable_json(path: Path):
    obj = _without_wall_clock(json.loads(path.read_text()))
    if path.name == "aggregation.json":
        obj = {k: v for k, v in obj.items() if k not in RESOURCES}
    if path.name == "sal.json":
        # The judge's tally of this process's calls: a rerun that finds the labelled sample
        # done asks nothing (the result fields, n_labelled and judge_label_counts, stay compared).
        obj["judge"].pop("report", None)
    return obj


class Harness:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HARNESS)], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        assert json.loads(ready) == {"ready": True}, ready

    def run(self, work: Path, script: str, args: list[str], kill_at: str | None = None, patches=(),
            timeout: float = 180) -> tuple[int, str]:
        log = work.parent / "stage.log"
        log.write_text("")
        common = ["model=tiny-random", f"paths.runs_root={work / 'runs'}", f"paths.cache_dir={work / 'cache'}",
                  "logger=csv", "data.generation.batch_size=8"]
        env = {"SAL_KILL_AT": kill_at} if kill_at else {}
        req = {"script": script, "args": common + list(args), "env": env, "log": str(log), "patches": list(patches),
               "timeout": timeout}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        print(f"{script} SAL_KILL_AT={kill_at or '-'}: returncode {reply['returncode']} in {reply['seconds']} s")
        return reply["returncode"], log.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


@pytest.fixture(scope="module")
def reference(harness, tmp_path_factory):
    """One uninterrupted train -> extract -> evaluate, snapshotted after each stage."""
    base = tmp_path_factory.mktemp("kill9")
    work = base / "work"
    snaps = {}
    for stage, script, args, patches in (("train", "train.py", TRAIN, ()),
                                         ("extract", "extract_rules.py", TRAIN, ()),
                                         ("evaluate", "evaluate.py", TRAIN + EVALUATE, EVALUATE_PATCHES)):
        code, log = harness.run(work, script, args, patches=patches)
        assert code == 0, log[-4000:]
        snaps[f"after_{stage}"] = base / f"after_{stage}"
        shutil.copytree(work, snaps[f"after_{stage}"], symlinks=True)
    return {"work": work, **snaps}


def _restore(reference, snapshot: str | None, drop=()) -> Path:
    work = reference["work"]
    shutil.rmtree(work, ignore_errors=True)
    if snapshot is None:
        work.mkdir()
    else:
        shutil.copytree(reference[snapshot], work, symlinks=True)
    for rel in drop:
        p = work / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return work


def _chain(harness, work: Path, script: str, args: list[str], points: list[str], patches=(),
           in_another_process=()) -> None:
    """Kill ``script`` at each point in turn, then run it to the end. A point in
    ``in_another_process`` kills a process the stage started (a DDP rank): the stage fails
    (Lightning SIGKILLs the launching rank, or its barrier breaks first), any way but 0."""
    for point in points:
        code, log = harness.run(work, script, args, kill_at=point, patches=patches)
        died = code != 0 if point in in_another_process else code == -9
        assert died, f"{script} with SAL_KILL_AT={point} ended with {code}, not SIGKILL:\n{log[-4000:]}"
    code, log = harness.run(work, script, args, patches=patches)
    assert code == 0, f"{script}'s rerun after kills at {points} failed:\n{log[-4000:]}"


# --------------------------------------------------------------------------- comparison
def _files(root: Path, rel: str) -> dict[str, Path]:
    """Visible files under root/rel (hidden temporaries, which no stage reads, left out)."""
    top = root / rel
    if top.is_file():
        return {rel: top}
    out = {}
    for p in sorted(top.rglob("*")):
        parts = p.relative_to(root).parts
        if p.is_file() and not any(part.startswith(".") for part in parts):
            out[str(p.relative_to(root))] = p
    return out


def _without_wall_clock(obj):
    if isinstance(obj, dict):
        return {k: _without_wall_clock(v) for k, v in obj.items() if k not in WALL_CLOCK}
    if isinstance(obj, list):
        return [_without_wall_clock(v) for v in obj]
    return obj


def _same_file(a: Path, b: Path) -> None:
    name = a.name
    if name.endswith(".parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True)
    elif name.endswith(".npz"):
        with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
            assert sorted(za.files) == sorted(zb.files)
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
    elif name.endswith(".safetensors"):
        import torch
        from safetensors.torch import load_file

        ta, tb = load_file(str(a)), load_file(str(b))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{a}: tensor {k} differs"
    elif name.endswith(".json"):
        assert _comparable_json(a) == _comparable_json(b)
    else:
        assert a.read_bytes() == b.read_bytes()


def _assert_same_outputs(reference, stage: str, snapshot: str, only=None) -> None:
    """The working directory's outputs of ``stage`` equal the snapshot's, file for file."""
    work, ref = reference["work"], reference[snapshot]
    for rel in OUTPUTS[stage]:
        want, got = _files(ref, rel), _files(work, rel)
        if only is not None:
            want = {k: v for k, v in want.items() if Path(k).name in only}
            got = {k: v for k, v in got.items() if Path(k).name in only}
        assert sorted(got) == sorted(want), f"{rel}: files differ from the uninterrupted run's"
        for k in want:
            try:
                _same_file(want[k], got[k])
            except AssertionError as err:
                raise AssertionError(f"{k} differs from the uninterrupted run's: {err}") from None


def _assert_no_duplicates(work: Path, stage: str) -> None:
    if stage == "train":
        (corpus_dir,) = (work / "cache" / "corpus").iterdir()
        for kind in ("corpus", "rule_set"):
            df = pd.read_parquet(corpus_dir / f"{kind}.parquet")
            assert list(df.idx) == list(range(len(df))), kind
        both = pd.read_parquet(corpus_dir / "responses.parquet")
        n_batches = len(list((corpus_dir / "batches").glob("*.parquet")))
        assert list(both.idx) == list(range(len(both))) and n_batches == -(-len(both) // 8)
    if stage == "extract":
        rules = pd.read_parquet(work / RUN / "rules" / "rules.parquet")
        assert not rules.duplicated(["p1", "p2", "q"]).any()
        expl = pd.read_parquet(work / RUN / "features" / "explanations.parquet")
        assert expl.feature.is_unique
    if stage == "evaluate":
        labelled = pd.read_parquet(work / RUN / "evaluate" / "labelled_rules.parquet")
        assert not labelled.duplicated(["p1", "p2", "q"]).any() and (labelled.judge_status == "ok").all()


# --------------------------------------------------------------------------- the chains
TRAIN_POINTS = [
    "generate.batch@1",  # two of seven response batches written
    "generate.batch@4",  # resumed at batch 2
    "atomic.before_rename@responses.parquet",
    "atomic.before_rename@manifest.json",
    "atomic.before_rename@rule_set.parquet",
    "cache.shard@shard_00001.safetensors",  # activation cache: two of four shards written
    "cache.before_rename",  # every shard and the index written, the directory not renamed
    "train.step@5",  # before the first checkpoint: starts over
    "atomic.before_rename@last.ckpt",  # the step-10 checkpoint complete, not in place: starts over
    "train.step@13",  # resumes from step 10
    "atomic.before_rename@crosscoder",  # trained to the end, the export not in place
    "atomic.before_rename@fingerprint.json:2",  # the export in place, its fingerprint (written last) not
]


def test_kill9_train(harness, reference):
    work = _restore(reference, None)
    _chain(harness, work, "train.py", TRAIN, TRAIN_POINTS)
    _assert_same_outputs(reference, "train", "after_train")
    _assert_no_duplicates(work, "train")


EXTRACT_POINTS = [
    "features.batch@feature pass (corpus)",  # first batch of the corpus's feature pass
    "interpret.explained",  # features explained, not verified
    "interpret.judged",  # verified, nothing written
    "atomic.before_rename@top_spans.parquet",
    "atomic.before_rename@explanations.parquet",
    "atomic.before_rename@explanations.fingerprint.json",
    "features.batch@feature pass (rule set):2",
    f"atomic.before_rename@{LAYER_COUNTS}",
    f"atomic.before_rename@{LAYER_COUNTS[:-4]}.fingerprint.json",
    "native.block@count",  # native kernel: counting pass
    "native.block@write",  # native kernel: writing pass
    "atomic.before_rename@feature_counts.parquet",
    "atomic.before_rename@aggregation.json",
    "atomic.before_rename@rules.parquet",
    "atomic.before_rename@rules.fingerprint.json",
]


def test_kill9_extract_native_engine(harness, reference):
    work = _restore(reference, "after_train")
    _chain(harness, work, "extract_rules.py", TRAIN, EXTRACT_POINTS)
    _assert_same_outputs(reference, "extract", "after_extract")
    _assert_no_duplicates(work, "extract")


def test_kill9_extract_numpy_engine(harness, reference):
    """Counting with the chunked numpy engine (over the kernel's memory budget), spilling
    partial tables: killed between chunks and after spills, it ends with the kernel's table,
    and the killed runs' spill folders are gone."""
    drop = [RUN / "rules" / name for name in RULES_OUTPUTS]
    work = _restore(reference, "after_extract", drop=drop)
    spill = work / "spill"
    points = ["count.chunk@premises:2", "count.spill:3", "count.chunk@conclusions:3"]
    _chain(harness, work, "extract_rules.py", TRAIN + NUMPY_ENGINE + [f"rules.spill_dir={spill}"], points)
    _assert_same_outputs(reference, "extract", "after_extract", only=RULES_OUTPUTS + [LAYER_COUNTS])
    _assert_no_duplicates(work, "extract")
    assert list(spill.iterdir()) == []


def test_kill9_extract_sharded(harness, reference):
    """Two ranks count shards of the rule set (numpy engine): rank 1 killed after its phase-1
    table (rank 0 then fails at the barrier or is SIGKILLed by Lightning), then rank 0 after
    its phase-2 table (rank 1 is left waiting at the barrier); the rerun reuses the finished
    shards and merges the native kernel's table."""
    drop = [RUN / "rules" / name for name in RULES_OUTPUTS]
    work = _restore(reference, "after_extract", drop=drop)
    points = ["shard.premises@rank1", "shard.rules@rank0"]
    _chain(harness, work, "extract_rules.py", TRAIN + SHARDED, points, in_another_process={"shard.premises@rank1"})
    _assert_same_outputs(reference, "extract", "after_extract", only=RULES_OUTPUTS + [LAYER_COUNTS])
    shards = sorted(p.name for p in (work / RUN / "rules" / "shards").iterdir() if not p.name.startswith("."))
    assert shards == ["rank0.npz", "rank0.premises.npz", "rank1.npz", "rank1.premises.npz"], shards


EVALUATE_POINTS = [
    "judge_rules.start",
    "judge.cache_put:7",  # seven answers in the judge cache
    "judge.cache_put:5",  # resumed: five more
    "judge_rules.done",  # every rule answered, nothing written
    "atomic.before_rename@labelled_rules.parquet",
    "atomic.before_rename@labelled_rules.fingerprint.json",
    "atomic.before_rename@fig2_histograms.png",
    "atomic.before_rename@report.md",
    "atomic.before_rename@sal.json",
    "atomic.before_rename@sal.fingerprint.json",
]


def test_kill9_evaluate(harness, reference):
    work = _restore(reference, "after_extract")
    _chain(harness, work, "evaluate.py", TRAIN + EVALUATE, EVALUATE_POINTS, patches=EVALUATE_PATCHES)
    _assert_same_outputs(reference, "evaluate", "after_evaluate")
    _assert_no_duplicates(work, "evaluate")
    # every answer of the uninterrupted run is in the cache, none twice, none else
    keys = lambda root: sorted(p.name for p in (root / "cache" / "judge").rglob("*") if p.is_file()  # noqa: E731
                               and not p.name.startswith("."))
    assert keys(work) == keys(reference["after_evaluate"])
