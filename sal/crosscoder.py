"""The cross-layer sparse autoencoder (crosscoder) of Appendix B, and a TopK variant.

Shapes: ``B`` tokens, ``L`` monitored layers, ``D`` residual width, ``C`` features.

    h^l     = ReLU(x^l W_enc^l + b_enc^l)                          (encoder, one per layer)
    x_hat^l = sum_{l' <= l} h^{l'} W_dec^{l'} + b_dec^l            (causal cross-layer decoder)
    loss    = sum_l ||x^l - x_hat^l||^2 + alpha * sum_{l,c} h_c^l ||W_dec^l[c]||

A feature found at layer l' has one decoder vector ``W_dec^{l'}[c]`` that it writes to every
layer l >= l' (the paper's ``D^{l'}``), so the decoder is: one batched matmul per source
layer, then a cumulative sum over the layer axis. Internally tensors are kept layer-major
(``[L, B, *]``) so that every matmul is a single ``bmm`` over the layer dimension.

Activation normalisation
------------------------
Residual-stream norms differ by orders of magnitude between layers and between models. The
crosscoder therefore works on *normalised* activations ``x_norm^l = s_l * x^l`` where the
scalar ``s_l`` makes ``E ||x_norm^l||^2 = D`` (estimated once before training, see
:func:`estimate_activation_scales`; stored in the ``act_scale`` buffer and in config.json).
A user applies them like this::

    crosscoder = Crosscoder.from_pretrained("run/crosscoder")
    feats_BLC = crosscoder.encode(crosscoder.normalise(acts_BLD))        # features of raw activations
    recon_BLD = crosscoder.denormalise(crosscoder.decode(feats_BLC))     # reconstruction in raw units

or simply ``crosscoder.features(acts_BLD)``. ``save_pretrained(..., fold_scales=True)`` folds the
scales into the exported encoder (``W_enc^l <- s_l W_enc^l``), so the exported encoder reads
raw activations directly; ``normalise`` then becomes the identity (config.json records
``scales_folded``). The decoder cannot absorb them: a source layer's decoder vector is
shared by all later target layers, which have different scales, so reconstructions stay in
normalised units and ``denormalise`` still divides target layer l by ``s_l``. The recipe
above is therefore correct for folded and unfolded exports alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sal.config.choices import Arch, DecoderNorm, MseReduction

FORMAT_VERSION = 1


class CrosscoderOutput(NamedTuple):
    """What ``forward`` returns."""

    feats_BLC: Tensor
    """Feature activations h (non-negative)."""
    recon_BLD: Tensor
    """Reconstruction x_hat in normalised units."""


class CrosscoderLoss(NamedTuple):
    """The loss and its parts; all scalars are means over tokens."""

    total: Tensor
    """mse + sparsity_coef * sparsity (+ aux_coef * aux for TopK)."""
    mse: Tensor
    """Sum over layers and dimensions of the squared error, mean over tokens."""
    sparsity: Tensor
    """Sum over layers and features of h_c^l * ||W_dec^l[c]||, mean over tokens."""
    aux: Tensor
    """AuxK loss on dead latents (TopK only; 0 for the ReLU crosscoder)."""
    feats_BLC: Tensor
    """Feature activations of the batch (graph attached; detach before keeping)."""
    recon_BLD: Tensor
    """Reconstruction of the batch."""


def _acc(t: Tensor) -> Tensor:
    """Accumulation precision: at least float32 (bf16 activations under autocast)."""
    return t if t.dtype == torch.float64 else t.float()


class Crosscoder(nn.Module):
    """ReLU crosscoder with the causal cross-layer decoder of Appendix B.

    Args:
        n_layers: number of monitored layers L.
        d_model: residual width D.
        n_features: dictionary size C.
        decoder_norm: ``"l2"`` (default; the reading of Lindsey et al., whom the paper
            follows) or ``"l1"`` (the literal Eq. 6: ||h_c D_{:,c}||_1 = h_c ||D_{:,c}||_1).
        init_decoder_norm: norm of each decoder row at initialisation. 0.1 because inputs
            are normalised to per-coordinate RMS 1: an encoder pre-activation (transpose
            init) is then ~N(0, 0.1^2) and the initial reconstruction is a small fraction
            of x (about ``0.01 * C / (2D)`` of x per source layer), so training starts near
            "reconstruct nothing" with every feature alive, and the sparsity penalty
            (proportional to decoder norms) starts small (Anthropic's April 2024 update
            uses 0.05-1 for the same reason).
        seed: seed of the random decoder directions (None: torch's global generator).
        mse_reduction: ``"sum"`` (default): ``mse`` sums the squared error over layers and
            dimensions (mean over tokens); ``"mean"``: it also averages over the L * D entries,
            the paper's "mean squared reconstruction error" reading of Eq. 6. The two differ
            in the scale of the sparsity coefficient: ``mean`` with alpha is ``sum`` with
            alpha * L * D divided by L * D, which Adam would not see but gradient clipping does,
            so the two train alike, not identically.
    """

    arch = "relu"

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_features: int,
        decoder_norm: str = "l2",
        init_decoder_norm: float = 0.1,
        seed: int | None = 0,
        mse_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if decoder_norm not in list(DecoderNorm):
            raise ValueError(f"decoder_norm={decoder_norm!r}: choose one of {', '.join(DecoderNorm)}.")
        if mse_reduction not in list(MseReduction):
            raise ValueError(f"mse_reduction={mse_reduction!r}: choose one of {', '.join(MseReduction)}.")
        self.mse_reduction = mse_reduction
        for name, value in (("n_layers", n_layers), ("d_model", d_model), ("n_features", n_features)):
            if int(value) < 1:
                raise ValueError(f"{name}={value}: must be a positive integer.")
        self.n_layers, self.d_model, self.n_features = int(n_layers), int(d_model), int(n_features)
        self.decoder_norm = decoder_norm
        self.init_decoder_norm = float(init_decoder_norm)
        L, D, C = self.n_layers, self.d_model, self.n_features
        self.W_enc = nn.Parameter(torch.empty(L, D, C))
        self.b_enc = nn.Parameter(torch.zeros(L, C))
        self.W_dec = nn.Parameter(torch.empty(L, C, D))
        self.b_dec = nn.Parameter(torch.zeros(L, D))
        self.register_buffer("act_scale", torch.ones(L))
        # Whether act_scale has been estimated (a checkpointed flag, so resumed runs keep
        # the scales of the original run instead of re-estimating them).
        self.register_buffer("scales_fitted", torch.zeros((), dtype=torch.bool))
        self.scales_folded = False
        self.reset_parameters(seed)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, seed: int | None = 0) -> None:
        """Decoder rows: random directions of norm ``init_decoder_norm``; encoder: their
        transpose; biases zero."""
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        dirs = torch.randn(self.n_layers, self.n_features, self.d_model, generator=gen)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(dirs * self.init_decoder_norm)
        self.W_enc.copy_(self.W_dec.transpose(1, 2))
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ------------------------------------------------------------ normalisation
    def normalise(self, acts_BLD: Tensor) -> Tensor:
        """Raw residual-stream activations -> the units ``encode`` expects."""
        if self.scales_folded:
            return acts_BLD
        return acts_BLD * self.act_scale.to(acts_BLD.dtype)[:, None]

    def denormalise(self, recon_BLD: Tensor) -> Tensor:
        """A reconstruction from ``decode`` -> raw residual-stream units."""
        return recon_BLD / self.act_scale.to(recon_BLD.dtype)[:, None]

    def features(self, acts_BLD: Tensor) -> Tensor:
        """Features of raw activations: ``encode(normalise(acts))``."""
        return self.encode(self.normalise(acts_BLD))

    @torch.no_grad()
    def set_activation_scales(self, scales_L: Tensor) -> None:
        scales_L = torch.as_tensor(scales_L, dtype=self.act_scale.dtype).flatten()
        if scales_L.shape != (self.n_layers,) or not torch.isfinite(scales_L).all() or (scales_L <= 0).any():
            raise ValueError(f"activation scales must be {self.n_layers} positive finite numbers, got {scales_L}.")
        if self.scales_folded:
            raise RuntimeError("Scales are folded into W_enc already; load an unfolded crosscoder to change them.")
        self.act_scale.copy_(scales_L.to(self.act_scale.device))
        self.scales_fitted.fill_(True)

    @torch.no_grad()
    def fold_scales_(self) -> "Crosscoder":
        """Fold ``act_scale`` into ``W_enc`` in place (encode then reads raw activations)."""
        if not self.scales_folded:
            self.W_enc.mul_(self.act_scale.to(self.W_enc.dtype)[:, None, None])
            self.scales_folded = True
        return self

    # ------------------------------------------------------------ the model
    def decoder_norms(self) -> Tensor:
        """``||W_dec^l[c]||`` as ``[L, C]`` (L2 or L1 according to ``decoder_norm``)."""
        if self.decoder_norm == "l2":
            return torch.linalg.vector_norm(self.W_dec, ord=2, dim=-1)
        return self.W_dec.abs().sum(dim=-1)

    def _preacts_LBC(self, x_BLD: Tensor) -> Tensor:
        if x_BLD.dim() != 3 or x_BLD.shape[1:] != (self.n_layers, self.d_model):
            raise ValueError(
                f"expected activations [tokens, {self.n_layers}, {self.d_model}], got {tuple(x_BLD.shape)}; "
                f"flatten batch and sequence first (acts_BTLD[mask] gives [tokens, L, D])."
            )
        x_LBD = x_BLD.transpose(0, 1)
        W_enc, b_enc = self.W_enc, self.b_enc
        if x_LBD.dtype != W_enc.dtype and not torch.is_autocast_enabled(x_LBD.device.type):
            x_LBD = x_LBD.to(W_enc.dtype)
        # baddbmm fuses the bias add into the matmul's output write.
        return torch.baddbmm(b_enc.unsqueeze(1).to(x_LBD.dtype), x_LBD, W_enc.to(x_LBD.dtype))

    def _activate_LBC(self, pre_LBC: Tensor) -> Tensor:
        return F.relu(pre_LBC)

    def _encode_LBC(self, x_BLD: Tensor) -> Tensor:
        return self._activate_LBC(self._preacts_LBC(x_BLD))

    def _decode_LBC(self, feats_LBC: Tensor, bias: bool = True) -> Tensor:
        # y^{l'} = h^{l'} W_dec^{l'} for every source layer in one bmm, then the causal sum
        # over source layers l' <= l is a cumulative sum along the layer axis.
        y_LBD = torch.bmm(feats_LBC, self.W_dec.to(feats_LBC.dtype))
        recon_LBD = torch.cumsum(y_LBD, dim=0)
        if bias:
            recon_LBD = recon_LBD + self.b_dec.unsqueeze(1).to(recon_LBD.dtype)
        return recon_LBD.transpose(0, 1)

    def encode(self, x_BLD: Tensor) -> Tensor:
        """Normalised activations ``[B, L, D]`` -> features ``[B, L, C]``."""
        return self._encode_LBC(x_BLD).transpose(0, 1)

    def decode(self, feats_BLC: Tensor) -> Tensor:
        """Features ``[B, L, C]`` -> reconstruction ``[B, L, D]`` (normalised units)."""
        return self._decode_LBC(feats_BLC.transpose(0, 1))

    def forward(self, x_BLD: Tensor) -> CrosscoderOutput:
        feats_LBC = self._encode_LBC(x_BLD)
        return CrosscoderOutput(feats_LBC.transpose(0, 1), self._decode_LBC(feats_LBC))

    def _sparsity(self, feats_LBC: Tensor, n_tokens: int) -> Tensor:
        # Summing h over tokens first turns the penalty into an [L, C] dot product, so no
        # [L, B, C] product tensor is materialised (its gradient is a broadcast).
        feats_sum_LC = _acc(feats_LBC).sum(dim=1) if feats_LBC.dtype == torch.float64 else \
            feats_LBC.sum(dim=1, dtype=torch.float32)
        return (feats_sum_LC * _acc(self.decoder_norms())).sum() / n_tokens

    def loss(self, x_BLD: Tensor, sparsity_coef: float | Tensor, dead_mask_LC: Tensor | None = None) -> CrosscoderLoss:
        """``total = mse + sparsity_coef * sparsity`` on normalised activations ``x_BLD``.

        ``dead_mask_LC`` is accepted for a uniform interface with the TopK variant and
        ignored here.
        """
        n_tokens = x_BLD.shape[0]
        feats_LBC = self._encode_LBC(x_BLD)
        recon_BLD = self._decode_LBC(feats_LBC)
        mse = (_acc(recon_BLD) - _acc(x_BLD)).pow(2).sum() / n_tokens
        if self.mse_reduction == "mean":
            mse = mse / (self.n_layers * self.d_model)
        sparsity = self._sparsity(feats_LBC, n_tokens)
        total = mse + sparsity_coef * sparsity
        zero = mse.new_zeros(())
        return CrosscoderLoss(total, mse, sparsity, zero, feats_LBC.transpose(0, 1), recon_BLD)

    # ------------------------------------------------------------ save / load
    def config_dict(self) -> dict[str, Any]:
        """Architecture fields of config.json (everything ``from_pretrained`` needs)."""
        return {
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_features": self.n_features,
            "decoder_norm": self.decoder_norm,
            "init_decoder_norm": self.init_decoder_norm,
            "mse_reduction": self.mse_reduction,
            "activation_scales": [float(s) for s in self.act_scale.tolist()],
            "scales_fitted": bool(self.scales_fitted),
            "scales_folded": bool(self.scales_folded),
        }

    @classmethod
    def _from_config_dict(cls, cfg: dict[str, Any]) -> "Crosscoder":
        return cls(cfg["n_layers"], cfg["d_model"], cfg["n_features"], cfg.get("decoder_norm", "l2"),
                   cfg.get("init_decoder_norm", 0.1), seed=None, mse_reduction=cfg.get("mse_reduction", "sum"))

    def save_pretrained(self, path: str | os.PathLike, extra_config: dict[str, Any] | None = None,
                        fold_scales: bool = False) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into directory ``path``.

        ``extra_config`` is merged into config.json (the trainer adds ``layers``,
        ``subject_model`` and ``training``). ``fold_scales=True`` exports ``W_enc`` with the
        activation scales folded in (see the module docstring). The directory is written
        to a temporary sibling and renamed, so a crash never leaves a half-written export.
        """
        from safetensors.torch import save_file

        path = Path(path)
        module = self
        if fold_scales and not self.scales_folded:
            module = self._copy().fold_scales_()
        config = dict(extra_config or {})
        config.update(module.config_dict())
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()
                   if k not in ("scales_fitted",)}
        from sal.atomic import atomic_dir

        with atomic_dir(path) as tmp:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "arch": module.arch})
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        return path

    @staticmethod
    def load_config(path: str | os.PathLike) -> dict[str, Any]:
        cfg_path = Path(path) / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"{cfg_path} not found: pass the directory written by save_pretrained "
                                    f"(a training run exports it to <run_dir>/crosscoder).")
        return json.loads(cfg_path.read_text())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Crosscoder":
        """Load a directory written by ``save_pretrained`` (ReLU or TopK, from config.json)."""
        from safetensors.torch import load_file

        cfg = cls.load_config(path)
        arch = cfg.get("arch", "relu")
        if arch not in list(Arch):
            raise ValueError(f"{path}/config.json has arch={arch!r}; this sal knows {', '.join(Arch)}.")
        klass = TopKCrosscoder if arch == "topk" else Crosscoder
        model = klass._from_config_dict(cfg)
        state = load_file(str(Path(path) / "model.safetensors"))
        state["scales_fitted"] = torch.tensor(bool(cfg.get("scales_fitted", True)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match config.json (missing {missing}, unexpected {unexpected}).")
        model.scales_folded = bool(cfg.get("scales_folded", False))
        return model.to(device)

    def _copy(self) -> "Crosscoder":
        clone = type(self)._from_config_dict(self.config_dict())
        clone.load_state_dict(self.state_dict())
        clone.scales_folded = self.scales_folded
        return clone.to(self.W_enc.device)

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, n_layers={self.n_layers}, d_model={self.d_model}, "
                f"n_features={self.n_features}, decoder_norm={self.decoder_norm}")


class TopKCrosscoder(Crosscoder):
    """TopK / BatchTopK crosscoder with the AuxK loss on dead latents (Gao et al., 2024).

    Beyond the paper: TopK fixes the number of active (feature, layer) pairs instead of
    tuning an L1 coefficient, and AuxK revives dead latents, the common failure of
    crosscoder training.

    * Selection ranks ``ReLU(pre) * ||W_dec^l[c]||`` (the same quantity the ReLU
      crosscoder penalises), so rescaling a decoder row cannot game the ranking; the kept
      values are ``ReLU(pre)``.
    * ``topk_mode="token"``: k (feature, layer) pairs per token. ``"batch"`` (BatchTopK):
      the top ``k * B`` over the whole batch, and a running threshold (EMA of the smallest
      kept score) replaces it in eval mode, so inference does not depend on the batch.
    * AuxK: the residual ``e = x - x_hat`` (detached) is reconstructed by the top
      ``aux_k`` *dead* latents only, without bias; ``aux = sum_l ||e^l - e_hat^l||^2``
      (mean over tokens, same units as ``mse``); ``total = mse + aux_coef * aux``. Dead
      latents are never selected by the main path, so only AuxK moves their weights.
    """

    arch = "topk"

    def __init__(self, n_layers: int, d_model: int, n_features: int, k: int = 32, topk_mode: str = "batch",
                 aux_k: int = 512, aux_coef: float = 1 / 32, decoder_norm: str = "l2",
                 init_decoder_norm: float = 0.1, seed: int | None = 0, threshold_momentum: float = 0.99) -> None:
        super().__init__(n_layers, d_model, n_features, decoder_norm, init_decoder_norm, seed)
        if topk_mode not in ("token", "batch"):
            raise ValueError(f"topk_mode={topk_mode!r}: choose 'token' or 'batch'.")
        if not 1 <= k <= n_layers * n_features:
            raise ValueError(f"k={k}: must be in [1, n_layers * n_features = {n_layers * n_features}].")
        self.k, self.topk_mode, self.aux_k, self.aux_coef = int(k), topk_mode, int(aux_k), float(aux_coef)
        self.threshold_momentum = float(threshold_momentum)
        self.register_buffer("threshold", torch.full((), -1.0))

    def _select(self, values_LBC: Tensor, scores_LBC: Tensor, k: int, batch: bool) -> Tensor:
        """Zero all but the top-k scores per token (or top k*B in the batch)."""
        L, B, C = scores_LBC.shape
        if batch:
            flat = scores_LBC.reshape(-1)
            kk = min(k * B, flat.numel())
            idx = torch.topk(flat, kk, sorted=False).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(0, idx, True).view(L, B, C)
        else:
            per_tok = scores_LBC.permute(1, 0, 2).reshape(B, L * C)
            idx = torch.topk(per_tok, min(k, L * C), dim=-1, sorted=False).indices
            mask = torch.zeros_like(per_tok, dtype=torch.bool).scatter_(1, idx, True)
            mask = mask.view(B, L, C).permute(1, 0, 2)
        return values_LBC * mask

    def _activate_LBC(self, pre_LBC: Tensor) -> Tensor:
        acts_LBC = F.relu(pre_LBC)
        with torch.no_grad():
            scores_LBC = acts_LBC * self.decoder_norms().to(acts_LBC.dtype)[:, None, :]
        if self.topk_mode == "batch" and not self.training and self.threshold >= 0:
            return acts_LBC * (scores_LBC > self.threshold.to(scores_LBC.dtype))
        feats_LBC = self._select(acts_LBC, scores_LBC, self.k, batch=self.topk_mode == "batch")
        if self.topk_mode == "batch" and self.training:
            with torch.no_grad():
                kept = scores_LBC[feats_LBC > 0]
                if kept.numel():
                    smallest = kept.min().float()
                    m = self.threshold_momentum
                    new = smallest if self.threshold < 0 else m * self.threshold + (1 - m) * smallest
                    self.threshold.copy_(new)
        return feats_LBC

    def loss(self, x_BLD: Tensor, sparsity_coef: float | Tensor = 0.0, dead_mask_LC: Tensor | None = None) -> CrosscoderLoss:
        """``total = mse + aux_coef * aux``; ``sparsity`` is reported but not penalised
        (``sparsity_coef`` is ignored: TopK fixes L0 by construction)."""
        n_tokens = x_BLD.shape[0]
        pre_LBC = self._preacts_LBC(x_BLD)
        feats_LBC = self._activate_LBC(pre_LBC)
        recon_BLD = self._decode_LBC(feats_LBC)
        err_BLD = _acc(x_BLD) - _acc(recon_BLD)
        mse = err_BLD.pow(2).sum() / n_tokens
        with torch.no_grad():
            sparsity = self._sparsity(feats_LBC, n_tokens)
        aux = mse.new_zeros(())
        if dead_mask_LC is not None and self.aux_k > 0 and bool(dead_mask_LC.any()):
            dead_LC = dead_mask_LC.to(pre_LBC.device, torch.bool)
            aux_acts_LBC = F.relu(pre_LBC) * dead_LC[:, None, :]
            with torch.no_grad():
                scores = aux_acts_LBC * self.decoder_norms().to(aux_acts_LBC.dtype)[:, None, :]
            k_aux = min(self.aux_k, int(dead_LC.sum()))
            aux_feats_LBC = self._select(aux_acts_LBC, scores, k_aux, batch=False)
            aux_recon_BLD = self._decode_LBC(aux_feats_LBC, bias=False)
            aux = (err_BLD.detach() - _acc(aux_recon_BLD)).pow(2).sum() / n_tokens
        total = mse + self.aux_coef * aux
        return CrosscoderLoss(total, mse, sparsity, aux, feats_LBC.transpose(0, 1), recon_BLD)

    def config_dict(self) -> dict[str, Any]:
        cfg = super().config_dict()
        cfg.update(k=self.k, topk_mode=self.topk_mode, aux_k=self.aux_k, aux_coef=self.aux_coef,
                   threshold=float(self.threshold))
        return cfg

    @classmethod
    def _from_config_dict(cls, cfg: dict[str, Any]) -> "TopKCrosscoder":
        return cls(cfg["n_layers"], cfg["d_model"], cfg["n_features"], k=cfg["k"], topk_mode=cfg.get("topk_mode", "batch"),
                   aux_k=cfg.get("aux_k", 512), aux_coef=cfg.get("aux_coef", 1 / 32),
                   decoder_norm=cfg.get("decoder_norm", "l2"), init_decoder_norm=cfg.get("init_decoder_norm", 0.1),
                   seed=None)


# ---------------------------------------------------------------- normalisation
class ScaleAccumulator:
    """Running sum of squared norms per layer, for :func:`estimate_activation_scales`.

    Kept as sums (not means) so shards from several ranks combine by addition
    (``torch.distributed.all_reduce`` of ``state()``)."""

    def __init__(self, n_layers: int) -> None:
        self.sq_norm_sum_L = torch.zeros(n_layers, dtype=torch.float64)
        self.n_tokens = 0

    def update(self, acts_BLD: Tensor) -> None:
        self.sq_norm_sum_L += acts_BLD.detach().double().pow(2).sum(dim=(0, 2)).cpu()
        self.n_tokens += acts_BLD.shape[0]

    def scales(self, d_model: int) -> Tensor:
        """``s_l = sqrt(D / mean ||x^l||^2)``, so ``mean ||s_l x^l||^2 = D``."""
        if self.n_tokens == 0:
            raise ValueError("No activations seen: cannot estimate normalisation scales.")
        mean_sq_L = self.sq_norm_sum_L / self.n_tokens
        if (mean_sq_L <= 0).any():
            raise ValueError(f"A layer has zero activations (mean squared norms {mean_sq_L.tolist()}).")
        return torch.sqrt(d_model / mean_sq_L).float()


def estimate_activation_scales(batches: Iterable[Tensor], max_tokens: int | None = None) -> Tensor:
    """One scalar per layer so the scaled activations have mean squared norm D.

    ``batches`` yields raw ``[tokens, L, D]`` tensors; stops after ``max_tokens``."""
    acc = None
    for acts_BLD in batches:
        if acc is None:
            acc = ScaleAccumulator(acts_BLD.shape[1])
            d_model = acts_BLD.shape[2]
        acc.update(acts_BLD)
        if max_tokens is not None and acc.n_tokens >= max_tokens:
            break
    if acc is None:
        raise ValueError("estimate_activation_scales got no batches.")
    return acc.scales(d_model)


def build_crosscoder(cfg, n_layers: int, d_model: int, seed: int | None = 0) -> Crosscoder:
    """A crosscoder from a ``CrosscoderConfig`` (duck-typed: arch, n_features, ...)."""
    if cfg.arch == "relu":
        return Crosscoder(n_layers, d_model, cfg.n_features, cfg.decoder_norm, cfg.init_decoder_norm, seed=seed,
                          mse_reduction=cfg.mse_reduction)
    if cfg.arch == "topk":
        return TopKCrosscoder(n_layers, d_model, cfg.n_features, k=cfg.k, topk_mode=cfg.topk_mode, aux_k=cfg.aux_k,
                              aux_coef=cfg.aux_coef, decoder_norm=cfg.decoder_norm,
                              init_decoder_norm=cfg.init_decoder_norm, seed=seed)
    raise ValueError(f"crosscoder.arch={cfg.arch!r}: choose one of {', '.join(Arch)}.")


def flops_per_token(n_layers: int, d_model: int, n_features: int, backward: bool = True,
                    input_grad: bool = False) -> int:
    """Matmul FLOPs per token of one training step (elementwise work is not counted).

    Forward: encoder ``2LDC`` + decoder ``2LCD``. Backward: the decoder needs grads wrt its
    input and its weights (``4LDC``); the encoder only wrt its weights (``2LDC``), since
    activations need no gradient, so a step executes ``10LDC``. ``input_grad=True`` adds
    the encoder's input grad, giving the conventional "3x forward" count ``12LDC``."""
    fwd = 4 * n_layers * d_model * n_features
    if not backward:
        return fwd
    return fwd + 4 * n_layers * d_model * n_features + (4 if input_grad else 2) * n_layers * d_model * n_features
