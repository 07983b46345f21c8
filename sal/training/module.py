"""LightningModule: the paper's crosscoder optimisation (Appendix C.1) and its metrics.

Each training step takes a batch of raw residual-stream activations ``[tokens, L, D]``,
normalises it (scales estimated on the very first batch, pooled over DDP ranks), and
minimises ``mse + alpha(step) * sparsity`` (ReLU) or ``mse + aux_coef * aux`` (TopK) with
AdamW, a constant LR with a linear cool-down over the last 20% of steps, and alpha ramped
linearly from 0 over the first 20%.

Logged every trainer.log_every_n_steps steps (rank 0): ``train/loss, train/mse,
train/sparsity, train/sparsity_coef, train/lr, train/nmse, train/fvu, train/fvu/layer_<i>,
train/l0, train/l0/layer_<i>, train/l0_features, train/dead_frac, train/tokens_per_s,
train/tokens_per_step, train/grad_norm`` (before clipping; + ``train/aux`` for TopK). Here
``nmse = sum ||x - x_hat||^2 / sum ||x||^2`` and
``fvu = sum ||x - x_hat||^2 / sum ||x - mean_batch(x)||^2`` over the batch (normalised
units, so every layer weighs equally), ``l0`` = active (feature, layer) pairs per token,
``l0_features`` = distinct active features per token (the paper's count), and
``dead_frac`` = fraction of the C features with no layer firing over the last
``dead_window_tokens`` tokens (all ranks pooled).
"""

from __future__ import annotations

import collections
import time
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.throughput import Throughput
from omegaconf import OmegaConf
from torch import Tensor

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal.crosscoder import Crosscoder, ScaleAccumulator, build_crosscoder
from sal.faults import kill_point
from sal.training.schedules import lr_at, sparsity_coef_at
from sal.training.sparsity_control import SparsityController


def as_config(obj: Any, cls: type):
    """A ``cls`` instance from an instance, a dict (a checkpoint's hyperparameters) or an
    OmegaConf node: OmegaConf's structured merge names unknown keys and wrong types."""
    if isinstance(obj, cls):
        return obj
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), obj))


def plain(config) -> dict:
    """A config as built-in types (enum choices as their names) for logs and checkpoints."""
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CrosscoderModule(L.LightningModule):
    """Trains a :class:`~sal.crosscoder.Crosscoder` on batches of raw activations."""

    def __init__(self, crosscoder: CrosscoderConfig | dict, optim: OptimConfig | dict, n_layers: int,
                 d_model: int, accumulate_grad_batches: int = 1) -> None:
        super().__init__()
        self.accumulate = int(accumulate_grad_batches)
        """Micro-batches per optimiser step on each rank (the training plan)."""
        self._micro = 0  # micro-batches seen since the fit started (checkpoints fall on step ends)
        self.cc_cfg = as_config(crosscoder, CrosscoderConfig)
        self.optim_cfg = as_config(optim, OptimConfig)
        self.save_hyperparameters({"crosscoder": plain(self.cc_cfg), "optim": plain(self.optim_cfg),
                                   "n_layers": n_layers, "d_model": d_model})
        self.crosscoder: Crosscoder = build_crosscoder(self.cc_cfg, n_layers, d_model, seed=self.cc_cfg.seed)
        self.sparsity_control: SparsityController | None = None
        if self.cc_cfg.target_l0 is not None:
            self.sparsity_control = SparsityController.over_training(
                self.cc_cfg.target_l0, self.cc_cfg.sparsity_coef, self.optim_cfg.max_steps,
                self.optim_cfg.sparsity_warmup_frac, self.cc_cfg.target_l0_adapt_frac)
        self._l0_sum = self._l0_tokens = 0.0  # this optimiser step's micro-batches, for the controller
        # Consecutive tokens (all ranks) since each (layer, feature) latent last fired.
        self.register_buffer("tokens_since_fired", torch.zeros(n_layers, self.cc_cfg.n_features, dtype=torch.long))
        self._throughput: Throughput | None = None
        self._fit_t0, self._tokens_seen = 0.0, 0  # this rank's tokens since the fit (re)started
        self.first_metrics: dict[str, float] | None = None
        self.recent_metrics: collections.deque = collections.deque(maxlen=20)

    # ------------------------------------------------------------------ schedules
    @property
    def max_steps(self) -> int:
        return self.optim_cfg.max_steps

    def current_sparsity_coef(self) -> float:
        if self.cc_cfg.arch == "topk":
            return 0.0
        # With a target L0 the ramp leads to the controller's alpha, which it adapts from the
        # end of the ramp (before that, L0 mostly reflects the dense initialisation).
        final = self.sparsity_control.coef if self.sparsity_control is not None else self.cc_cfg.sparsity_coef
        return sparsity_coef_at(self.global_step, self.max_steps, final, self.optim_cfg.sparsity_warmup_frac)

    def configure_optimizers(self):
        o = self.optim_cfg
        kwargs = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        # The fused kernel (one pass over the parameters, CPU and CUDA) is the fastest AdamW.
        # Not under fp16 loss scaling: a fused optimiser unscales internally, after the point
        # where gradients are clipped.
        precision = str(getattr(self._trainer, "precision", "32-true")) if self._trainer is not None else "32-true"
        opt = None
        if precision != "16-mixed":
            try:
                opt = torch.optim.AdamW(self.crosscoder.parameters(), fused=True, **kwargs)
            except (RuntimeError, TypeError):
                opt = None
        if opt is None:
            opt = torch.optim.AdamW(self.crosscoder.parameters(), **kwargs)
        total, cooldown = self.max_steps, o.cooldown_frac
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, 1.0, cooldown))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Clipping here instead of Trainer(gradient_clip_val=...): Lightning refuses that with
        # fused optimisers under mixed precision. Gradients are unscaled at this point.
        params = [p for p in self.crosscoder.parameters() if p.grad is not None]
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self._metrics_step():
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, logger=True)

    # ------------------------------------------------------------------ helpers
    def dead_mask(self) -> Tensor:
        """``[L, C]`` latents silent for at least ``dead_window_tokens`` tokens."""
        return self.tokens_since_fired >= self.cc_cfg.dead_window_tokens

    def _all_reduce(self, t: Tensor, op=None) -> Tensor:
        if _dist_ready():
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t

    @torch.no_grad()
    def _fit_scales(self, acts_BLD: Tensor) -> None:
        acc = ScaleAccumulator(acts_BLD.shape[1])
        acc.update(acts_BLD)
        pooled = torch.cat([acc.sq_norm_sum_L, torch.tensor([float(acc.n_tokens)], dtype=torch.float64)])
        pooled = self._all_reduce(pooled.to(self.device)).cpu()
        acc.sq_norm_sum_L, acc.n_tokens = pooled[:-1], int(pooled[-1].item())
        self.crosscoder.set_activation_scales(acc.scales(acts_BLD.shape[2]))

    @torch.no_grad()
    def _init_decoder_bias(self, x_BLD: Tensor) -> None:
        """b_dec <- the mean normalised activation of the first micro-batch over all ranks."""
        pooled = torch.cat([x_BLD.double().sum(dim=0).flatten(), x_BLD.new_tensor([x_BLD.shape[0]], dtype=torch.float64)])
        pooled = self._all_reduce(pooled)
        mean_LD = (pooled[:-1] / pooled[-1]).view(x_BLD.shape[1], x_BLD.shape[2])
        self.crosscoder.b_dec.copy_(mean_LD.to(self.crosscoder.b_dec.dtype))

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        # Lightning's throughput meter over a window of two updates: the rate between two
        # logged steps (the first measured from the start of the fit), whatever the cadence.
        world = self.trainer.world_size if self._trainer is not None else 1
        self._throughput = Throughput(world_size=world, window_size=2)
        self._fit_t0, self._tokens_seen = time.perf_counter(), 0
        self._throughput.update(time=0.0, batches=0, samples=0)
        self._micro = 0

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        acts_BLD = batch[0] if isinstance(batch, (list, tuple)) else batch
        n_tokens = acts_BLD.shape[0]
        self._tokens_seen += n_tokens
        if self.cc_cfg.normalise and not bool(self.crosscoder.scales_fitted):
            self._fit_scales(acts_BLD)
        x_BLD = self.crosscoder.normalise(acts_BLD.float())
        if self.global_step == 0 and self._micro == 0 and self.cc_cfg.init_decoder_bias == "mean":
            self._init_decoder_bias(x_BLD)
        coef = self.current_sparsity_coef()
        out = self.crosscoder.loss(x_BLD, coef, dead_mask_LC=self.dead_mask())
        feats_BLC = out.feats_BLC.detach()
        active_LC = self._track_dead(feats_BLC, n_tokens)
        self._micro += 1
        step_end = self._micro % self.accumulate == 0  # the last micro-batch of an optimiser step
        # Metrics describe an optimiser step: measured on its last micro-batch.
        log_step = step_end and self._metrics_step()
        controlling = self.sparsity_control is not None and self.sparsity_control.adapting(self.global_step)
        by_features = self.cc_cfg.target_l0_unit == "features"
        # Distinct active features summed over tokens (a feature counts once whatever its
        # layers): a logged metric and the controller's default unit, computed once.
        features_sum = (feats_BLC > 0).any(dim=1).sum() if log_step or (controlling and by_features) else None
        if controlling:
            self._control_sparsity(features_sum if by_features else active_LC.sum(), n_tokens, step_end)
        if not log_step:
            return out.total
        metrics = self._step_metrics(x_BLD, out, coef, n_tokens, active_LC, features_sum)
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, logger=True)
        self.log("fvu", metrics["train/fvu"], prog_bar=True, logger=False)
        self.log("l0", metrics["train/l0"], prog_bar=True, logger=False)
        if self.trainer.is_global_zero:
            # one device->host transfer for all metrics
            floats = dict(zip(metrics, torch.stack([v.float() for v in metrics.values()]).tolist()))
            floats["step"] = self.global_step
            if self.first_metrics is None:
                self.first_metrics = floats
            self.recent_metrics.append(floats)
        return out.total

    def _tokens_per_s(self) -> float:
        """Tokens per second over all ranks since the previous logged step."""
        if self._throughput is None:  # a step outside a fit (tests call training_step directly)
            return 0.0
        self._throughput.update(time=time.perf_counter() - self._fit_t0, batches=self._micro,
                                samples=self._tokens_seen)
        rates = self._throughput.compute()
        return float(rates.get("samples_per_sec", rates.get("device/samples_per_sec", 0.0)))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._micro % self.accumulate == 0:  # an optimiser step ended (and its checkpoint, if due, is saved)
            kill_point("train.step", self.global_step)

    @torch.no_grad()
    def _control_sparsity(self, l0_sum: Tensor, n_tokens: int, step_end: bool) -> None:
        """Feed this optimiser step's L0 (all micro-batches, all ranks) to the controller;
        ``l0_sum`` is the micro-batch's L0 in the controller's unit, summed over its tokens."""
        self._l0_sum += float(l0_sum)
        self._l0_tokens += n_tokens
        if not step_end:
            return
        pooled = self._all_reduce(torch.tensor([self._l0_sum, self._l0_tokens], dtype=torch.float64,
                                               device=self.device))
        self._l0_sum = self._l0_tokens = 0.0
        self.sparsity_control.update(self.global_step, float(pooled[0] / pooled[1]))

    def _metrics_step(self) -> bool:
        """Whether this step's metrics are computed: the steps the loggers write (every
        trainer.log_every_n_steps), the first, and the last 20 (the run's summary). Computing
        and logging ~30 metrics costs a sizeable share of a small CPU step."""
        step, every = self.global_step, self._trainer.log_every_n_steps if self._trainer is not None else 1
        return step == 0 or (step + 1) % every == 0 or step >= self.max_steps - self.recent_metrics.maxlen

    @torch.no_grad()
    def _track_dead(self, feats_BLC: Tensor, n_tokens: int) -> Tensor:
        """Count tokens since each latent last fired (every step: AuxK needs it); returns the
        per-(layer, feature) active counts of this batch."""
        world = self.trainer.world_size if self._trainer is not None else 1
        active_LC = torch.count_nonzero(feats_BLC, dim=0)
        # A latent fired if it fired on any rank (MAX over ranks keeps the counters identical).
        fired_LC = self._all_reduce((active_LC > 0).int(), dist.ReduceOp.MAX if _dist_ready() else None).bool()
        self.tokens_since_fired.add_(n_tokens * world).masked_fill_(fired_LC, 0)
        return active_LC

    @torch.no_grad()
    def _step_metrics(self, x_BLD: Tensor, out, coef: float, n_tokens: int, active_LC: Tensor,
                      features_sum: Tensor) -> dict[str, Tensor]:
        world = self.trainer.world_size if self._trainer is not None else 1
        window = self.cc_cfg.dead_window_tokens
        dead_frac = (self.tokens_since_fired >= window).all(dim=0).float().mean()

        x = x_BLD.float()
        err_L = (x - out.recon_BLD.detach().float()).pow(2).sum(dim=(0, 2))
        sq_L = x.pow(2).sum(dim=(0, 2))
        var_L = (x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=(0, 2))
        l0_L = active_LC.sum(dim=1).float() / n_tokens

        step_tokens = n_tokens * world * self.accumulate  # the global batch
        tps = self._tokens_per_s()
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer is not None else self.optim_cfg.lr

        m: dict[str, Tensor | float] = {
            "train/loss": out.total.detach(),
            "train/mse": out.mse.detach(),
            "train/sparsity": out.sparsity.detach(),
            "train/sparsity_coef": float(coef),
            "train/lr": float(lr),
            "train/nmse": err_L.sum() / sq_L.sum().clamp_min(1e-12),
            "train/fvu": err_L.sum() / var_L.sum().clamp_min(1e-12),
            "train/l0": l0_L.sum(),
            # The paper's "active features", next to l0's (feature, layer) pairs.
            "train/l0_features": features_sum.float() / n_tokens,
            "train/tokens_per_step": float(step_tokens),
            "train/dead_frac": dead_frac,
            "train/tokens_per_s": float(tps),
        }
        if self.cc_cfg.arch == "topk":
            m["train/aux"] = out.aux.detach()
        fvu_L = err_L / var_L.clamp_min(1e-12)
        for i in range(x.shape[1]):
            m[f"train/fvu/layer_{i}"] = fvu_L[i]
            m[f"train/l0/layer_{i}"] = l0_L[i]
        return {k: (v if isinstance(v, Tensor) else torch.tensor(v, device=x.device)) for k, v in m.items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The summary of a resumed run still reports the first step's fvu.
        checkpoint["sal_metrics"] = {"first": self.first_metrics, "recent": list(self.recent_metrics)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("sal_metrics") or {}
        self.first_metrics = saved.get("first")
        self.recent_metrics.extend(saved.get("recent") or [])

    def summary(self) -> dict[str, float]:
        """Mean of the last (up to 20) steps' metrics, plus the first step's fvu/nmse."""
        if not self.recent_metrics:
            return {}
        keys = ("train/nmse", "train/fvu", "train/l0", "train/l0_features", "train/dead_frac", "train/mse",
                "train/tokens_per_s", "train/tokens_per_step", "train/sparsity_coef")
        keys = [k for k in keys if all(k in r for r in self.recent_metrics)]  # checkpoints of older releases
        out = {k.split("/", 1)[1]: sum(r[k] for r in self.recent_metrics) / len(self.recent_metrics) for k in keys}
        out["last_step"] = self.recent_metrics[-1]["step"]
        if self.first_metrics is not None:
            out["first_step"] = self.first_metrics["step"]
            out["first_fvu"] = self.first_metrics["train/fvu"]
            out["first_nmse"] = self.first_metrics["train/nmse"]
        return out
