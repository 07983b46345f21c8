"""Sharded, resumable rule counting whose merged result equals a single-process run.

The rule set is split into ``world_size`` contiguous shards of samples. Counting runs in two
phases so that Apriori pruning stays exact across shards:

1. every rank counts ``count(P)`` on its shard and writes ``shards/rank<r>.premises.npz``;
2. after a barrier every rank merges all premise shards (the *global* count(P)), counts
   ``count(P, q)`` on its shard for the premises passing ``min_premise_count`` globally, and
   writes ``shards/rank<r>.npz`` holding its raw premise table and raw rule table (no
   smoothing, no ``min_rule_count`` filter);
3. after a second barrier rank 0 sums all shard tables and applies beta and the filters
   (``merge_shards``), giving exactly ``count_rules`` on the whole set.

Files are written to a temporary name and moved into place with ``os.replace``; each file
records a fingerprint of its inputs (the shard's layer counts, the settings and, for phase 2,
all premise shards), and a rerun skips every shard whose file matches: a killed job resumes
where it stopped. ``run_sharded`` drives the phases with Lightning Fabric (DDP, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sal.atomic import atomic_path
from sal.faults import kill_point
from sal.rules._csr import as_layer_count_csr
from sal.rules.numpy_engine import count_conclusions, count_premises
from sal.rules.options import CountOptions
from sal.rules.rule_counts import PremiseCounts, RuleCounts, rules_table

SHARD_SUBDIR = "shards"
_FORMAT_VERSION = 1


def shard_range(n_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous shard (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")
    base, extra = divmod(n_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def premise_shard_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, SHARD_SUBDIR, f"rank{rank}.premises.npz")


def shard_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, SHARD_SUBDIR, f"rank{rank}.npz")


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
        h.update(b"|")
    return h.hexdigest()


def _data_fingerprint(mat: sp.csr_matrix) -> str:
    return _fingerprint(list(mat.shape), mat.indptr.astype(np.int64), mat.indices, mat.data)


def _save_atomic(path: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def _load(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files if k != "meta"}
    return meta, arrays


def _read_meta(path: str) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None  # missing or truncated: recount


def _premise_arrays(p: PremiseCounts) -> dict[str, np.ndarray]:
    return {
        "n_samples": np.array(p.n_samples, np.int64),
        "feature_counts": p.feature_counts,
        "pair_p1": p.pair_p1,
        "pair_p2": p.pair_p2,
        "pair_counts": p.pair_counts,
    }


def _premises_from(arrays: dict[str, np.ndarray]) -> PremiseCounts:
    return PremiseCounts(
        n_samples=int(arrays["n_samples"]),
        feature_counts=arrays["feature_counts"],
        pair_p1=arrays["pair_p1"],
        pair_p2=arrays["pair_p2"],
        pair_counts=arrays["pair_counts"],
    )


def _rules_from(meta: dict, arrays: dict[str, np.ndarray]) -> RuleCounts:
    return RuleCounts(
        n_features=meta["n_features"],
        min_premise_count=meta["min_premise_count"],
        **{k: arrays[k] for k in ("one_p", "one_q", "one_n", "two_p1", "two_p2", "two_q", "two_n")},
    )


def _shard_meta(kind: str, rank: int, world_size: int, mat: sp.csr_matrix, max_premises: int, **inputs: Any) -> dict:
    """What a shard file was counted from, with its fingerprint (a rerun skips a matching file)."""
    meta = {"version": _FORMAT_VERSION, "kind": kind, "rank": rank, "world_size": world_size,
            "n_features": mat.shape[1], "max_premises": max_premises, **inputs}
    meta["fingerprint"] = _fingerprint(meta)
    return meta


def _is_done(path: str, meta: dict) -> bool:
    old = _read_meta(path)
    return old is not None and old.get("fingerprint") == meta["fingerprint"]


def _spill_into_shards(options: CountOptions, out_dir: str) -> CountOptions:
    return dataclasses.replace(options, spill_dir=os.path.join(out_dir, SHARD_SUBDIR))


def count_shard_premises(
    shard_counts: Any, rank: int, world_size: int, out_dir: str, options: CountOptions = CountOptions(), *,
    allowed: Any = None,
) -> str:
    """Phase 1 for one rank: count(P) of its shard -> ``shards/rank<r>.premises.npz`` (skipped if done).

    Reads ``options.max_premises`` and the resource fields; partial tables spill into the shard folder.
    """
    mat = as_layer_count_csr(shard_counts, allowed)
    meta = _shard_meta("premises", rank, world_size, mat, options.max_premises, data=_data_fingerprint(mat))
    path = premise_shard_path(out_dir, rank)
    if _is_done(path, meta):
        return path
    premises = count_premises(mat, _spill_into_shards(options, out_dir))
    _save_atomic(path, meta, _premise_arrays(premises))
    kill_point("shard.premises", f"rank{rank}")
    return path


def merge_premise_shards(paths: list[str]) -> PremiseCounts:
    """Global count(P) from all ranks' phase-1 files."""
    loaded = [_load(p) for p in paths]
    _check_complete([m for m, _ in loaded], paths)
    loaded.sort(key=lambda x: x[0]["rank"])
    return PremiseCounts.merge([_premises_from(a) for _, a in loaded])


def _premise_shard_metas(out_dir: str, world_size: int) -> tuple[list[str], list[dict]]:
    """Paths and metadata of every rank's phase-1 file; all must exist."""
    paths = [premise_shard_path(out_dir, r) for r in range(world_size)]
    metas = [_read_meta(p) for p in paths]
    if any(m is None for m in metas):
        missing = [p for p, m in zip(paths, metas) if m is None]
        raise FileNotFoundError(f"phase-1 premise shards missing: {missing}; run count_shard_premises on every rank first")
    return paths, metas


def count_shard_rules(
    shard_counts: Any, rank: int, world_size: int, out_dir: str, options: CountOptions = CountOptions(), *,
    allowed: Any = None,
) -> str:
    """Phase 2 for one rank (all phase-1 files must exist): raw tables -> ``shards/rank<r>.npz``.

    Reads ``options.max_premises``, ``options.min_premise_count`` (Apriori, against the merged
    count(P) of all shards) and the resource fields; no smoothing and no ``min_rule_count`` here.
    """
    mat = as_layer_count_csr(shard_counts, allowed)
    premise_paths, premise_metas = _premise_shard_metas(out_dir, world_size)
    data = _data_fingerprint(mat)
    if premise_metas[rank]["data"] != data:
        raise ValueError(
            f"rank {rank}: its layer counts differ from the ones its premise shard was counted on; "
            f"delete {os.path.join(out_dir, SHARD_SUBDIR)} or pass the same shard"
        )
    meta = _shard_meta("rules", rank, world_size, mat, options.max_premises,
                       min_premise_count=options.min_premise_count, data=data,
                       premise_shards=[m["fingerprint"] for m in premise_metas])
    path = shard_path(out_dir, rank)
    if _is_done(path, meta):
        return path
    rules = count_conclusions(mat, merge_premise_shards(premise_paths), _spill_into_shards(options, out_dir))
    own_premises = _premises_from(_load(premise_paths[rank])[1])
    arrays = _premise_arrays(own_premises)
    arrays.update({k: getattr(rules, k) for k in ("one_p", "one_q", "one_n", "two_p1", "two_p2", "two_q", "two_n")})
    _save_atomic(path, meta, arrays)
    kill_point("shard.rules", f"rank{rank}")
    return path


def _check_complete(metas: list[dict], paths: list[str]) -> None:
    if not metas:
        raise ValueError("no shard files given; pass the paths of every rank's shard")
    world = {m["world_size"] for m in metas}
    ranks = sorted(m["rank"] for m in metas)
    if len(world) != 1 or ranks != list(range(world.pop())):
        raise ValueError(
            f"shard files {paths} do not form one complete run (ranks {ranks}, world sizes "
            f"{sorted({m['world_size'] for m in metas})}); pass exactly one file per rank of one run"
        )


def merge_shards(paths: list[str], options: CountOptions | None = None) -> pd.DataFrame:
    """Sum the shards' raw tables, then smooth and filter: equals ``count_rules`` on all samples.

    ``options`` (beta, the filters, the memory budget and spill folder of the merge) defaults
    to the default settings with the ``min_premise_count`` the shards were pruned with; a
    larger threshold is allowed, a smaller one is not (those premises were never enumerated).
    """
    metas = [_read_meta(p) for p in paths]
    if any(m is None or m.get("kind") != "rules" for m in metas):
        bad = [p for p, m in zip(paths, metas) if m is None or m.get("kind") != "rules"]
        raise ValueError(f"not finished rule shards: {bad}; rerun the counting (finished shards are skipped)")
    _check_complete(metas, paths)
    order = sorted(range(len(paths)), key=lambda i: metas[i]["rank"])
    premises = PremiseCounts.merge([_premises_from(_load(paths[i])[1]) for i in order])

    def shard_rules() -> Iterator[RuleCounts]:
        for i in order:
            meta, arrays = _load(paths[i])
            yield _rules_from(meta, arrays)

    if options is None:
        options = CountOptions(min_premise_count=metas[0]["min_premise_count"])  # RuleCounts.merge checks all agree
    rules = RuleCounts.merge(shard_rules(), memory_budget_gb=options.memory_budget_gb, spill_dir=options.spill_dir)
    return rules_table(premises, rules, options)


def make_fabric(
    num_processes: int, accelerator: str = "cpu", strategy: str = "ddp", timeout_s: float = 6 * 3600, num_nodes: int = 1
):
    """A Fabric for counting: ``num_processes`` ranks on each of ``num_nodes`` machines (SLURM or
    torchrun provide the rendezvous across nodes); with DDP on CPU the process group uses gloo."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    if strategy in ("ddp", "ddp_spawn"):
        strategy_obj = DDPStrategy(
            process_group_backend="gloo" if accelerator == "cpu" else None,
            timeout=datetime.timedelta(seconds=timeout_s),  # a rank may count for hours before the barrier
            start_method="popen" if strategy == "ddp" else "spawn",
        )
    else:
        strategy_obj = strategy
    return Fabric(accelerator=accelerator, devices=num_processes, num_nodes=num_nodes, strategy=strategy_obj)


def run_sharded(
    layer_counts: Any,
    out_dir: str,
    num_processes: int = 1,
    *,
    allowed: Any = None,
    accelerator: str = "cpu",
    strategy: str = "ddp",
    num_nodes: int = 1,
    fabric: Any = None,
    **counting: Any,
) -> pd.DataFrame | None:
    """Count rules over ``num_processes`` Fabric ranks per node on ``num_nodes`` nodes; global rank 0
    returns the merged table, others None. ``out_dir`` must be on a filesystem every node sees
    (rank 0 merges all shard files).

    ``counting``: the fields of ``CountOptions`` (``max_premises``, ``beta``, ...), as keywords of
    ``count_rules``; the ranks spill into ``out_dir``, ``spill_dir`` is the merge's.
    With ``strategy="ddp"`` Fabric relaunches the calling script once per extra rank, so every
    process must reach this call with the same ``layer_counts`` (load them from a file or
    recompute them deterministically). Pass an already launched ``fabric`` to reuse one.
    """
    options = CountOptions(**counting)
    if fabric is None:
        fabric = make_fabric(num_processes, accelerator=accelerator, strategy=strategy, num_nodes=num_nodes)
        fabric.launch()
    rank, world_size = fabric.global_rank, fabric.world_size
    mat = as_layer_count_csr(layer_counts, allowed)
    start, end = shard_range(mat.shape[0], rank, world_size)
    shard = mat[start:end]
    shard_options = dataclasses.replace(options, progress=options.progress and rank == 0)
    count_shard_premises(shard, rank, world_size, out_dir, shard_options)
    fabric.barrier()
    count_shard_rules(shard, rank, world_size, out_dir, shard_options)
    fabric.barrier()
    if rank != 0:
        return None
    return merge_shards([shard_path(out_dir, r) for r in range(world_size)], options)
