"""The Lightning data module that feeds crosscoder training.

Activations come from the subject model as it runs (:class:`sal.training.stream.ActivationStream`)
or, with ``optim.activation_cache=<dir>``, from an activation cache written once as safetensors
shards keyed by (model, layers, corpus), so that every job of a sparsity sweep reads them back
instead of running the subject model (:mod:`sal.training.cache`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import lightning as L
from torch.utils.data import DataLoader

from sal.training.cache import CachedActivationStream, ensure_activation_cache
from sal.training.stream import ActivationStream


class ActivationDataModule(L.LightningDataModule):
    """Feeds the crosscoder: streams activations, or reads/writes an activation cache.

    The subject model is moved to the Trainer's device when the dataloader is built, so
    each DDP rank runs its own copy on its own GPU.
    """

    def __init__(self, model, tokenizer, texts: Sequence[str], layers: Sequence[int], optim, seed: int = 0,
                 model_name: str = "", capture_fn: Callable | None = None, mask_fn: Callable | None = None,
                 micro_batch_tokens: int | None = None, rank_step_tokens: int | None = None) -> None:
        super().__init__()
        self.model, self.tokenizer, self.texts, self.layers = model, tokenizer, list(texts), list(layers)
        self.optim, self.seed, self.model_name = optim, seed, model_name
        self.capture_fn, self.mask_fn = capture_fn, mask_fn
        # One rank's share of an optimiser step, and the batches it is fed in (the plan).
        self.rank_step_tokens = rank_step_tokens or optim.batch_tokens
        self.micro_batch_tokens = micro_batch_tokens or self.rank_step_tokens

    def _start_tokens(self) -> int:
        step = self.trainer.global_step if self.trainer is not None else 0
        return step * self.rank_step_tokens

    def train_dataloader(self) -> DataLoader:
        o = self.optim
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            if self.model is not None and next(self.model.parameters()).device != device:
                self.model.to(device)
        start = self._start_tokens()
        if o.activation_cache:
            cache_dir = ensure_activation_cache(o.activation_cache, self.model, self.tokenizer, self.texts,
                                                self.layers, o, model_name=self.model_name,
                                                capture_fn=self.capture_fn, mask_fn=self.mask_fn)
            dataset = CachedActivationStream(cache_dir, self.micro_batch_tokens, o.shuffle_buffer_tokens, seed=self.seed,
                                             start_tokens=start)
        else:
            dataset = ActivationStream(self.model, self.tokenizer, self.texts, self.layers, self.micro_batch_tokens,
                                       o.shuffle_buffer_tokens, o.max_tokens_per_instance, o.docs_per_forward,
                                       seed=self.seed, start_tokens=start, capture_fn=self.capture_fn,
                                       mask_fn=self.mask_fn)
        # batch_size=None: the dataset yields whole batches; workers stay 0 because the
        # subject model (often on the GPU) lives in this process.
        return DataLoader(dataset, batch_size=None, num_workers=0)
