"""Schemas for the crosscoder architecture and its optimisation (Appendix B / C.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from sal.config.choices import Arch, CacheDtype, DecoderBiasInit, DecoderNorm, L0Unit, MseReduction, TopkMode, coerce_choices


@dataclass
class CrosscoderConfig:
    """Architecture of the cross-layer sparse autoencoder."""

    arch: Arch = Arch.relu
    """relu (the paper: ReLU + sparsity penalty) | topk (TopK/BatchTopK + AuxK, beyond the paper)."""
    n_features: int = 2**15
    """Dictionary size C (the paper: 2^15 for every model)."""
    decoder_norm: DecoderNorm = DecoderNorm.l2
    """Norm of decoder rows in the sparsity penalty: l2 (Lindsey et al.) | l1 (literal Eq. 6)."""
    sparsity_coef: float = 5e-3
    """Final sparsity coefficient alpha (paper: 5e-3; 3e-3 for Qwen2.5-14B). Ignored by topk."""
    mse_reduction: MseReduction = MseReduction.sum
    """relu: the reconstruction term of the loss. sum = squared error summed over layers and
    dimensions (mean over tokens); mean = also averaged over the L * D entries (the paper's
    "mean squared reconstruction error"), which makes alpha worth L * D times more: with it the
    paper's 5e-3 gives a sparse crosscoder, with sum it gives an almost dense one (README)."""
    target_l0: Optional[float] = None
    """relu: the sparsity to reach, in target_l0_unit per token. sparsity_coef is then the
    starting alpha, and a feedback controller on the measured L0 adapts alpha until
    target_l0_adapt_frac of the steps, then freezes it (sal.training.sparsity_control). None:
    alpha follows the fixed ramp to sparsity_coef. SAL compares models, and one alpha gives a
    different sparsity for every width and model; a matched L0 removes that confound."""
    target_l0_unit: L0Unit = L0Unit.features
    """features = distinct active features per token (a feature counts once whatever its
    layers: the paper's "active features") | pairs = active (feature, layer) pairs per token."""
    target_l0_adapt_frac: float = 0.9
    """The controller adapts alpha from the end of the alpha warm-up (optim.sparsity_warmup_frac)
    to this fraction of the steps, then freezes it for the rest of the LR cool-down. L0 keeps
    drifting down at a fixed alpha as the dictionary trains, so a long adaptation lands closer."""
    init_decoder_norm: float = 0.1
    """Norm of each decoder row at initialisation (random directions; encoder = transpose)."""
    init_decoder_bias: DecoderBiasInit = DecoderBiasInit.mean
    """mean = set b_dec to the mean of the first batch's (normalised) activations, pooled over
    ranks, before the first step; zero = leave it at 0. At zero the bias needs thousands of
    steps to reach the mean, and meanwhile a sparse dictionary spends its few active features
    encoding it (a paper-regime dictionary then explains less than the mean alone, fvu > 1)."""
    normalise: bool = True
    """Estimate one scale per layer on the first batch so activations have mean squared norm D."""
    fold_scales_on_export: bool = False
    """Fold the activation scales into the exported encoder (W_enc <- s W_enc)."""
    k: int = 32
    """topk: active (feature, layer) pairs per token (per-token mean for BatchTopK)."""
    topk_mode: TopkMode = TopkMode.batch
    """topk: token (TopK per token) | batch (BatchTopK, with an inference threshold)."""
    aux_k: int = 512
    """topk: dead latents used by the AuxK loss per token (Gao et al.: d_model / 2)."""
    aux_coef: float = 1 / 32
    """topk: weight of the AuxK loss (Gao et al.: 1/32)."""
    dead_window_tokens: int = 1_000_000
    """A (feature, layer) latent is dead after this many consecutive tokens without firing
    (drives train/dead_frac and the AuxK loss)."""
    seed: int = 0
    """Seed of the initial decoder directions and of the activation stream's shuffling."""

    def __post_init__(self) -> None:
        coerce_choices(self, "crosscoder")
        if self.mse_reduction != "sum" and self.arch != "relu":
            raise ValueError(f"crosscoder.mse_reduction={self.mse_reduction!r} applies to arch=relu only (arch="
                             f"{self.arch!r} has no sparsity coefficient to weigh against it); leave it at 'sum'.")
        if self.n_features < 1:
            raise ValueError(f"crosscoder.n_features={self.n_features}: must be >= 1 (paper: 32768).")
        if self.sparsity_coef < 0:
            raise ValueError(f"crosscoder.sparsity_coef={self.sparsity_coef} (the `sparsity=` override sets it) is "
                             f"negative: the sparsity coefficient must be >= 0 (the paper uses 5e-3, and 3e-3 for "
                             f"qwen2.5-14b).")
        if self.target_l0 is not None:
            if self.arch != "relu":
                raise ValueError(f"crosscoder.target_l0 applies to arch=relu (arch={self.arch!r} fixes L0 with k).")
            if self.target_l0 <= 0 or (self.target_l0_unit == "features" and self.target_l0 > self.n_features):
                raise ValueError(f"crosscoder.target_l0={self.target_l0}: must be > 0 and at most n_features, or null.")
            if self.sparsity_coef <= 0:
                raise ValueError("crosscoder.target_l0 starts the controller at sparsity_coef: set it > 0.")
        if not 0 < self.target_l0_adapt_frac < 1:
            raise ValueError(f"crosscoder.target_l0_adapt_frac={self.target_l0_adapt_frac}: must be in (0, 1).")
        if self.init_decoder_norm <= 0:
            raise ValueError(f"crosscoder.init_decoder_norm={self.init_decoder_norm}: must be > 0 (default 0.1).")
        if self.k < 1:
            raise ValueError(f"crosscoder.k={self.k}: must be >= 1.")
        if self.aux_k < 0 or self.aux_coef < 0:
            raise ValueError(f"crosscoder.aux_k={self.aux_k}, aux_coef={self.aux_coef}: must be >= 0 (0 disables AuxK).")
        if self.dead_window_tokens < 1:
            raise ValueError(f"crosscoder.dead_window_tokens={self.dead_window_tokens}: must be >= 1.")


@dataclass
class OptimConfig:
    """Optimisation and the activation stream (Appendix C.1)."""

    lr: float = 2e-4
    """AdamW learning rate (paper: 2e-4)."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """AdamW betas (paper: 0.9, 0.999)."""
    eps: float = 6.25e-10
    """AdamW epsilon (paper: 6.25e-10)."""
    weight_decay: float = 0.0
    """AdamW weight decay (paper: none)."""
    max_steps: int = 5000
    """Optimiser steps (paper: 5K, about 5 epochs of the 128K-document corpus)."""
    cooldown_frac: float = 0.2
    """Final fraction of steps over which the LR falls linearly to 0 (paper: 0.2)."""
    sparsity_warmup_frac: float = 0.2
    """Initial fraction of steps over which alpha rises linearly from 0 (paper: 0.2)."""
    batch_instances: int = 128
    """The global batch: documents (instances) per optimiser step over all ranks, as the
    paper counts it (128). Each rank takes batch_instances / world of them."""
    micro_batch_instances: Optional[int] = None
    """Instances per forward/backward on one rank; the rank's share is reached by gradient
    accumulation. None: the largest divisor of the share that fits the device (the training
    plan, sal/training/plan.py)."""
    tokens_per_instance: int = 470
    """Mean valid tokens per document. A batch holds batch_instances * tokens_per_instance
    tokens drawn from the shuffle buffer (paper: 128 * 470 ~ 60K tokens). Fixed-size token
    batches keep DDP ranks in lockstep."""
    max_tokens_per_instance: int = 1024
    """Documents are truncated to this many tokens before the subject model runs."""
    docs_per_forward: int = 8
    """Documents per subject-model forward pass (its batch size)."""
    shuffle_buffer_tokens: int = 2**17
    """Tokens held in the shuffle buffer that mixes tokens across documents (per rank)."""
    grad_clip: Optional[float] = 1.0
    """Gradient-norm clipping value; None disables it."""
    checkpoint_every_n_steps: int = 250
    """Save last.ckpt every N steps for resumption."""
    activation_cache: Optional[str] = None
    """Directory of an on-disk activation cache (safetensors shards keyed by model, layers
    and corpus). None (default) streams activations and writes nothing to disk."""
    cache_dtype: CacheDtype = CacheDtype.bfloat16
    """dtype of cached activations: bfloat16 | float16 | float32."""
    cache_shard_tokens: int = 2**16
    """Tokens per activation-cache shard."""

    @property
    def batch_tokens(self) -> int:
        """Tokens per optimiser step over all ranks: batch_instances * tokens_per_instance."""
        return self.batch_instances * self.tokens_per_instance

    def __post_init__(self) -> None:
        coerce_choices(self, "optim")
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr}: must be > 0 (paper: 2e-4).")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas}: need two values in [0, 1) (paper: [0.9, 0.999]).")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError(f"optim.eps={self.eps}, weight_decay={self.weight_decay}: eps > 0, weight_decay >= 0.")
        if self.max_steps < 1:
            raise ValueError(f"optim.max_steps={self.max_steps}: must be >= 1 (paper: 5000).")
        for name in ("cooldown_frac", "sparsity_warmup_frac"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"optim.{name}={v}: must be in [0, 1] (paper: 0.2).")
        if self.cooldown_frac + self.sparsity_warmup_frac > 1:
            raise ValueError("optim.cooldown_frac + optim.sparsity_warmup_frac must be <= 1.")
        for name in ("batch_instances", "tokens_per_instance", "max_tokens_per_instance", "docs_per_forward",
                     "checkpoint_every_n_steps", "cache_shard_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"optim.{name}={getattr(self, name)}: must be >= 1.")
        if self.micro_batch_instances is not None and self.micro_batch_instances < 1:
            raise ValueError(f"optim.micro_batch_instances={self.micro_batch_instances}: must be >= 1 or null.")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip}: must be > 0, or null to disable clipping.")
