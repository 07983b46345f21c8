"""Optional on-disk activation cache: safetensors shards of valid-token activations.

Layout of ``<root>/<key>/``: ``shard_00000.safetensors`` ... (tensor ``acts`` ``[N, L, D]``)
and ``index.json`` (shard sizes, layers, d_model, dtype and the fields of the key). The key
hashes the subject model (name + a weight fingerprint), the layers, the tokenization
settings and the corpus text, so every job of a sparsity sweep over the same model and
corpus finds the same cache, and any change makes a new one.

Written once: the builder takes ``<root>/<key>.lock`` (O_EXCL), writes into a temporary
directory and renames it into place; other processes (DDP ranks, other sweep jobs) wait for
``index.json``. A builder that dies leaves a lock that stops being refreshed: a process on
the same host takes over at once when the lock's owner is gone (killed), any other after
``stale_after_s``; the new builder removes the dead one's temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import psutil
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from sal import activations
from sal.faults import kill_point
from sal.training.stream import (Chunk, ShuffleBuffer, _seed, rank_and_world, resumable_batches, shard_index,
                                 skipped_batches)

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def corpus_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def model_fingerprint(model) -> str:
    """Name plus a hash of a slice of every parameter (cheap, but tells random inits apart)."""
    h = hashlib.sha256(str(getattr(getattr(model, "config", None), "_name_or_path", "")).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_key(model, tokenizer, texts: Sequence[str], layers: Sequence[int], optim, model_name: str = "") -> dict:
    return {
        "model_name": model_name,
        "model_fingerprint": model_fingerprint(model),
        "tokenizer": f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}",
        "layers": list(layers),
        "max_tokens_per_instance": optim.max_tokens_per_instance,
        "cache_dtype": optim.cache_dtype,
        "corpus_sha256": corpus_hash(texts),
        "n_documents": len(texts),
    }


def _key_dir(root: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (key.get("model_name") or "model"))
    return root / f"{name}-{digest}"


def _lock_owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _owner_is_dead(lock: Path) -> bool:
    """The lock was taken by a process of this host that no longer exists (killed): its
    builder will never finish, and waiting ``stale_after_s`` would only delay the rerun."""
    try:
        host, pid = lock.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return False  # being written, or another format: fall back on the age
    return host == socket.gethostname() and pid != os.getpid() and not psutil.pid_exists(pid)


def _try_lock(lock: Path, stale_after_s: float) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, _lock_owner().encode())
        os.close(fd)
        return True
    except FileExistsError:
        try:
            if _owner_is_dead(lock):
                log.warning("Activation-cache lock %s belongs to a process that is gone; taking over.", lock)
                lock.unlink(missing_ok=True)
            elif time.time() - lock.stat().st_mtime > stale_after_s:
                log.warning("Activation-cache lock %s is stale; taking over.", lock)
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False


def ensure_activation_cache(root: str | os.PathLike, model, tokenizer, texts: Sequence[str], layers: Sequence[int],
                            optim, model_name: str = "", capture_fn: Callable | None = None,
                            mask_fn: Callable | None = None, stale_after_s: float = 900.0,
                            poll_s: float = 2.0) -> Path:
    """Return the cache directory for these inputs, building it first if needed.

    Only global rank 0 (of this job) builds; the other ranks and concurrent jobs wait."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(model, tokenizer, texts, layers, optim, model_name)
    target = _key_dir(root, key)
    lock = target.with_name(target.name + ".lock")
    rank, _ = rank_and_world()
    while not (target / "index.json").exists():
        if rank == 0 and _try_lock(lock, stale_after_s):
            try:
                if not (target / "index.json").exists():
                    _build(target, lock, key, model, tokenizer, texts, layers, optim, capture_fn, mask_fn)
            finally:
                lock.unlink(missing_ok=True)
        else:
            time.sleep(poll_s)
    return target


def _build(target: Path, lock: Path, key: dict, model, tokenizer, texts, layers, optim, capture_fn, mask_fn) -> None:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    special = activations.special_token_ids(tokenizer)
    dtype = _DTYPES[optim.cache_dtype]
    # We hold the lock: any other temporary of this key is a killed builder's leftover.
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    shards, pending, n_pending, d_model = [], {"acts": [], "doc": [], "pos": []}, 0, None

    def flush(final: bool = False) -> None:
        nonlocal pending, n_pending
        while n_pending >= optim.cache_shard_tokens or (final and n_pending > 0):
            cat = {k: torch.cat(v) for k, v in pending.items()}
            n = min(optim.cache_shard_tokens, cat["acts"].shape[0])
            name = f"shard_{len(shards):05d}.safetensors"
            save_file({k: v[:n].contiguous() for k, v in cat.items()}, str(tmp / name))
            shards.append({"file": name, "n_tokens": n})
            kill_point("cache.shard", name)
            pending = {k: ([v[n:]] if v.shape[0] > n else []) for k, v in cat.items()}
            n_pending = cat["acts"].shape[0] - n
            os.utime(lock, None)  # heartbeat: the lock is not stale while shards appear

    step = optim.docs_per_forward
    batches = activations.forward_batches(tokenizer, texts, optim.max_tokens_per_instance, step, special,
                                          activations.SORT_WINDOW, mask_fn)
    for batch in tqdm(batches, desc="activation cache", unit="forward", total=-(-len(texts) // step)):
        if not batch.valid_BT.any():
            continue
        acts = activations.valid_activations(model, batch, layers, capture_fn)
        d_model = acts.shape[-1]
        row_pos = batch.valid_BT.nonzero()  # the same row-major order as valid_activations' boolean index
        pending["acts"].append(acts.to("cpu", dtype))
        pending["doc"].append(batch.docs_B[row_pos[:, 0]].to(torch.int32))
        pending["pos"].append(row_pos[:, 1].to(torch.int32))
        n_pending += acts.shape[0]
        flush()
    flush(final=True)
    if not shards:
        raise ValueError("The corpus has no valid tokens: cannot build an activation cache.")
    index = {"shards": shards, "n_tokens": sum(s["n_tokens"] for s in shards), "layers": list(layers),
             "d_model": d_model, "dtype": optim.cache_dtype, "key": key, "token_positions": True}
    (tmp / "index.json").write_text(json.dumps(index, indent=2))
    for f in tmp.iterdir():  # on disk before the rename makes the cache visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    kill_point("cache.before_rename", target.name)
    os.replace(tmp, target)
    log.info("Activation cache written: %s (%d tokens)", target, index["n_tokens"])


def cached_token_activations(root: str | os.PathLike, model, tokenizer, texts: Sequence[str], layers: Sequence[int],
                             optim, model_name: str = "") -> dict | None:
    """The activations a finished cache holds for these inputs, by document and position:
    ``{doc: (positions [n] int64, acts [n, L, D])}``; None when there is no such cache, it
    predates the position records, or its dtype would round the model's activations (then
    they are recomputed). Lets a later pass over the same documents skip the subject model."""
    from safetensors.torch import load_file

    target = _key_dir(Path(root), cache_key(model, tokenizer, texts, layers, optim, model_name))
    if not (target / "index.json").exists():
        return None
    index = json.loads((target / "index.json").read_text())
    model_dtype = next(model.parameters()).dtype
    if not index.get("token_positions") or _DTYPES[index["dtype"]] not in (torch.float32, model_dtype):
        return None
    parts = [load_file(str(target / s["file"])) for s in index["shards"]]
    acts, doc, pos = (torch.cat([p[k] for p in parts]) for k in ("acts", "doc", "pos"))
    order = torch.argsort(doc.long() * (pos.max().long() + 1) + pos.long())
    acts, doc, pos = acts[order], doc[order].long(), pos[order].long()
    bounds = torch.searchsorted(doc, torch.arange(len(texts) + 1))
    return {d: (pos[bounds[d]:bounds[d + 1]], acts[bounds[d]:bounds[d + 1]])
            for d in range(len(texts)) if bounds[d + 1] > bounds[d]}


class CachedActivationStream(IterableDataset):
    """Infinite stream of ``[batch_tokens, L, D]`` batches read from an activation cache.

    Each epoch visits the shards in a seeded order; a shard's tokens are permuted and dealt
    round-robin to ``world_size * num_workers`` shards of the stream, then mixed across
    cache shards by a :class:`ShuffleBuffer`. ``start_tokens`` (resume) leaves out exactly the
    batches an uninterrupted stream yielded first (``resumable_batches``).
    """

    def __init__(self, cache_dir: str | os.PathLike, batch_tokens: int, shuffle_buffer_tokens: int, seed: int = 0,
                 start_tokens: int = 0, device: torch.device | str = "cpu", epochs: int | None = None) -> None:
        # device: where the shuffle buffer lives (host memory unless told otherwise).
        super().__init__()
        self.dir = Path(cache_dir)
        self.index = json.loads((self.dir / "index.json").read_text())
        self.batch_tokens, self.buffer_tokens = int(batch_tokens), int(shuffle_buffer_tokens)
        self.seed, self.start_tokens, self.device, self.epochs = seed, int(start_tokens), torch.device(device), epochs

    def __iter__(self) -> Iterator[Tensor]:
        shard, n_shards = shard_index()
        # Seeded without start_tokens: a resumed stream replays the same draws (resumable_batches).
        buffer = ShuffleBuffer(self.buffer_tokens, self.batch_tokens,
                               torch.Generator().manual_seed(_seed(self.seed, "cache-buffer", shard, 0)),
                               device=self.device)
        yield from resumable_batches(buffer, self._chunks(shard, n_shards),
                                     skipped_batches(self.start_tokens, self.batch_tokens))

    def _chunks(self, shard: int, n_shards: int) -> Iterator[Chunk]:
        """One chunk per cache shard and epoch: this stream shard's rows of it, permuted."""
        from safetensors.torch import load_file

        files = self.index["shards"]
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            g = torch.Generator().manual_seed(_seed(self.seed, "cache-order", epoch))
            for fi in torch.randperm(len(files), generator=g).tolist():
                n = files[fi]["n_tokens"]
                gi = torch.Generator().manual_seed(_seed(self.seed, "cache-rows", epoch, fi))
                rows = torch.randperm(n, generator=gi)[shard::n_shards]
                path = str(self.dir / files[fi]["file"])
                yield rows.numel(), lambda path=path, rows=rows: load_file(path)["acts"][rows]
            epoch += 1
