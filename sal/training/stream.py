"""Streaming activations for crosscoder training.

The subject model runs beside the crosscoder: documents are tokenized and batched
(:func:`sal.activations.forward_batches`), run through the residual-stream capture under
``no_grad``, reduced to their valid tokens (no padding, no BOS/special tokens), and pushed
into a :class:`ShuffleBuffer` that mixes tokens across documents and yields fixed-size batches
``[batch_tokens, L, D]``. Nothing touches the disk: 8-layer activations of a 7B model over
the paper's corpus are terabytes (the optional cache, :mod:`sal.training.cache`, reads its
batches through the same buffer).

Sharding: documents are permuted once per epoch (same seed on every process) and dealt
round-robin to ``world_size * num_workers`` shards, so DDP ranks and dataloader workers see
disjoint documents. The stream is infinite (epochs repeat with fresh permutations); the
Trainer's ``max_steps`` ends training. On resume, the stream leaves out exactly the batches
that earlier steps consumed and goes on with the ones an uninterrupted run would have had
next (:func:`resumable_batches`: the skipped part is replayed on row numbers, by tokenizing
only; the subject model runs again only for the documents whose tokens were still in the
shuffle buffer at the checkpoint).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from sal import activations


def rank_and_world() -> tuple[int, int]:
    """This process's (rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_index() -> tuple[int, int]:
    """(shard, n_shards) over DDP ranks x dataloader workers."""
    rank, world = rank_and_world()
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world * nw


def _seed(*parts) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ShuffleBuffer:
    """Token-level shuffle buffer of capacity ``capacity`` tokens.

    Tokens are appended as they arrive (document after document). Whenever the buffer is
    full, a random subset of ``capacity - keep`` tokens (``keep = min(capacity // 2,
    capacity - batch_tokens)``) leaves as batches and the rest stays to mix with the next
    documents, so every batch draws from many documents.
    """

    def __init__(self, capacity: int, batch_tokens: int, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> None:
        if capacity < batch_tokens:
            raise ValueError(f"shuffle buffer capacity {capacity} < batch_tokens {batch_tokens}: "
                             f"raise optim.shuffle_buffer_tokens.")
        self.capacity, self.batch_tokens, self.gen = int(capacity), int(batch_tokens), generator
        # Host memory by default: at paper shapes the buffer (2^17 tokens x 8 layers x 5120
        # bf16 values, 10 GiB) would otherwise sit on the GPU beside the subject model; the
        # trainer moves each batch to the device.
        self.device = torch.device(device)
        self.keep = min(self.capacity // 2, self.capacity - self.batch_tokens)
        self.storage_NLD: Tensor | None = None
        self.n = 0

    def push(self, acts_NLD: Tensor, start: int = 0) -> Iterator[Tensor]:
        """Append ``acts_NLD[start:]``, yielding batches whenever the buffer fills."""
        pos = start
        while pos < acts_NLD.shape[0]:
            pos = self._fill(acts_NLD, pos)
            if self.n == self.capacity:
                yield from self._batches(self._drain(self.keep))

    def flush(self) -> Iterator[Tensor]:
        """Emit what is left in full batches (the remainder under one batch is dropped)."""
        if self.n >= self.batch_tokens:
            yield from self._batches(self._drain(self.n % self.batch_tokens))
        self.n = 0

    def _fill(self, acts_NLD: Tensor, pos: int) -> int:
        """Copy rows from ``pos`` until the buffer is full or the rows end; the next ``pos``."""
        if self.storage_NLD is None:
            self.storage_NLD = acts_NLD.new_empty((self.capacity, *acts_NLD.shape[1:]), device=self.device)
        take = min(self.capacity - self.n, acts_NLD.shape[0] - pos)
        self.storage_NLD[self.n:self.n + take] = acts_NLD[pos:pos + take]
        self.n += take
        return pos + take

    def _drain(self, keep: int) -> Tensor:
        """The rows that leave (a whole number of batches, drawn at random); the rest stay."""
        assert self.storage_NLD is not None
        perm = torch.randperm(self.n, generator=self.gen).to(self.storage_NLD.device)
        n_out = ((self.n - keep) // self.batch_tokens) * self.batch_tokens
        out_NLD = self.storage_NLD[perm[:n_out]]
        kept = perm[n_out:]
        self.storage_NLD[: kept.numel()] = self.storage_NLD[kept]
        self.n = kept.numel()
        return out_NLD

    def _batches(self, out_NLD: Tensor) -> Iterator[Tensor]:
        for i in range(0, out_NLD.shape[0], self.batch_tokens):
            yield out_NLD[i:i + self.batch_tokens]


Chunk = tuple[int, Callable[[], Tensor]]
"""What a stream pushes into its shuffle buffer, in order: (rows, a function computing them
``[rows, L, D]``), so that the rows can be counted without computing them."""


def resumable_batches(buffer: ShuffleBuffer, chunks: Iterable[Chunk], skip_batches: int = 0) -> Iterator[Tensor]:
    """The batches ``buffer`` makes of ``chunks``, without the first ``skip_batches``: exactly
    the batches an uninterrupted stream yields after them (a resumed run trains on the same
    data, in the same order, as one that was never stopped).

    The skipped part is replayed on row numbers instead of activations (the buffer's random
    draws depend only on how many rows it holds), which leaves the buffer's generator where
    the uninterrupted stream's was; then only the chunks with rows still in the buffer are
    computed, to refill it. That is at most a buffer's worth of rows, however long the run."""
    chunks = iter(chunks)
    if skip_batches > 0:
        yield from _resume(buffer, chunks, skip_batches)
    for n, compute in chunks:
        if n:
            yield from buffer.push(compute())
    yield from buffer.flush()


def _resume(buffer: ShuffleBuffer, chunks: Iterator[Chunk], skip_batches: int) -> Iterator[Tensor]:
    """Replay the first ``skip_batches`` batches on row numbers; yield the rest of the batch
    draw in progress and of the chunk being pushed at that point (as activations), leaving
    ``buffer`` holding the uninterrupted stream's rows. ``chunks`` is advanced past that chunk."""
    ids = ShuffleBuffer(buffer.capacity, buffer.batch_tokens, buffer.gen)  # shares the generator
    held: list[tuple[int, int, Callable[[], Tensor]]] = []  # (first row number, rows, compute)
    emitted, offset = 0, 0
    pending = torch.zeros(0, dtype=torch.long)
    current: tuple[int, int] | None = None  # (index in held, rows of it already pushed)

    def still_held() -> None:  # forget chunks none of whose rows is in the buffer any more
        if ids.n and held:
            first = int(ids.storage_NLD[:ids.n].min())
            while held and held[0][0] + held[0][1] <= first:
                held.pop(0)

    for n, compute in chunks:
        held.append((offset, n, compute))
        rows = torch.arange(offset, offset + n)
        offset += n
        pos = 0
        while pos < n and current is None:
            pos = ids._fill(rows, pos)
            if ids.n == ids.capacity:
                out = ids._drain(ids.keep)
                k = out.shape[0] // ids.batch_tokens
                if emitted + k >= skip_batches:
                    pending, current = out[(skip_batches - emitted) * ids.batch_tokens:], (len(held) - 1, pos)
                else:
                    emitted += k
                    still_held()
        if current is not None:
            break
    else:  # the stream ended within the skipped batches (a finite number of epochs)
        if ids.n < ids.batch_tokens:
            return
        out = ids._drain(ids.n % ids.batch_tokens)
        k = out.shape[0] // ids.batch_tokens
        if emitted + k <= skip_batches:
            return
        pending = out[(skip_batches - emitted) * ids.batch_tokens:]
        ids.n = 0

    # Compute the chunks that rows still to come from the buffer belong to.
    wanted = torch.cat([ids.storage_NLD[:ids.n] if ids.n else pending[:0], pending])
    starts = torch.tensor([h[0] for h in held])
    chunk_of = torch.searchsorted(starts, wanted, right=True) - 1
    needed = set(chunk_of.unique().tolist()) | ({current[0]} if current is not None else set())
    computed = {c: held[c][2]() for c in sorted(needed)}
    some = next(iter(computed.values()))
    acts = some.new_empty((wanted.numel(), *some.shape[1:]))
    for c, a in computed.items():
        sel = chunk_of == c
        acts[sel.to(acts.device)] = a[(wanted[sel] - held[c][0]).to(a.device)]
    buffer.storage_NLD = some.new_empty((buffer.capacity, *some.shape[1:]), device=buffer.device)
    buffer.storage_NLD[:ids.n] = acts[:ids.n]
    buffer.n = ids.n
    yield from buffer._batches(acts[ids.n:])
    if current is not None:
        yield from buffer.push(computed[current[0]], current[1])


def skipped_batches(start_tokens: int, batch_tokens: int) -> int:
    """Batches a resumed stream leaves out: ``start_tokens`` (tokens its rank consumed before
    the checkpoint) in whole batches."""
    if start_tokens % batch_tokens:
        raise ValueError(f"start_tokens={start_tokens} is not a whole number of {batch_tokens}-token batches")
    return start_tokens // batch_tokens


class ActivationStream(IterableDataset):
    """Infinite stream of ``[batch_tokens, L, D]`` activation batches from documents.

    Args:
        model: subject causal LM (eval mode; its device is where activations are made).
        tokenizer: HF tokenizer (``tokenizer(list[str], truncation=True, max_length=n)``).
        texts: the documents (already formatted: question + response).
        layers: residual-stream points (see :func:`sal.activations.residual_stream`).
        batch_tokens, shuffle_buffer_tokens, max_tokens_per_instance, docs_per_forward:
            see :class:`~sal.config.crosscoder.OptimConfig`.
        seed: seeds document order and buffer shuffling.
        start_tokens: tokens (per shard) already consumed by earlier steps; skipped.
        epochs: stop after this many passes (None: infinite, the training default).
        capture_fn / mask_fn: injectable ``residual_stream`` / ``valid_token_mask``.
        sort_window: documents of this many forward batches are tokenized together and
            run in order of length, to cut padding (1 sorts within each forward only).
    """

    def __init__(self, model, tokenizer, texts: Sequence[str], layers: Sequence[int], batch_tokens: int,
                 shuffle_buffer_tokens: int, max_tokens_per_instance: int = 1024, docs_per_forward: int = 8,
                 seed: int = 0, start_tokens: int = 0, epochs: int | None = None,
                 special_ids: set[int] | None = None, capture_fn: Callable | None = None,
                 mask_fn: Callable | None = None, sort_window: int = activations.SORT_WINDOW) -> None:
        super().__init__()
        if len(texts) == 0:
            raise ValueError("ActivationStream got no documents: the training corpus is empty.")
        self.model, self.tokenizer, self.texts, self.layers = model, tokenizer, list(texts), list(layers)
        self.batch_tokens, self.buffer_tokens = int(batch_tokens), int(shuffle_buffer_tokens)
        self.max_tokens, self.docs_per_forward = int(max_tokens_per_instance), int(docs_per_forward)
        self.seed, self.start_tokens, self.epochs = seed, int(start_tokens), epochs
        self.special_ids = special_ids if special_ids is not None else activations.special_token_ids(tokenizer)
        self.capture_fn, self.mask_fn = capture_fn, mask_fn
        self.sort_window = max(1, int(sort_window))

    def document_order(self, epoch: int, shard: int, n_shards: int) -> list[int]:
        """This shard's document indices for ``epoch`` (a seeded permutation, dealt round-robin)."""
        g = torch.Generator().manual_seed(_seed(self.seed, "docs", epoch))
        return torch.randperm(len(self.texts), generator=g)[shard::n_shards].tolist()

    def __iter__(self) -> Iterator[Tensor]:
        shard, n_shards = shard_index()
        if len(self.texts) < n_shards:
            raise ValueError(f"{len(self.texts)} documents cannot feed {n_shards} ranks x workers: "
                             f"add documents or use fewer devices/workers.")
        # Seeded without start_tokens: a resumed stream replays the same draws (resumable_batches).
        buffer = ShuffleBuffer(self.buffer_tokens, self.batch_tokens,
                               torch.Generator().manual_seed(_seed(self.seed, "buffer", shard, 0)))
        yield from resumable_batches(buffer, self._chunks(shard, n_shards),
                                     skipped_batches(self.start_tokens, self.batch_tokens))

    def _chunks(self, shard: int, n_shards: int) -> Iterator[Chunk]:
        """One chunk per subject-model forward: its valid tokens' count (tokenizing only) and
        the forward that computes their activations."""
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            docs = [self.texts[j] for j in self.document_order(epoch, shard, n_shards)]
            for batch in activations.forward_batches(self.tokenizer, docs, self.max_tokens, self.docs_per_forward,
                                                     self.special_ids, self.sort_window, self.mask_fn):
                n_valid = int(batch.valid_BT.sum())
                if n_valid:
                    yield n_valid, lambda batch=batch: activations.valid_activations(self.model, batch, self.layers,
                                                                                      self.capture_fn)
            epoch += 1
