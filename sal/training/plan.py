"""The training plan: how the global batch is split over ranks and micro-batches, and what one
device holds at its peak, computed from the configs alone (before any weights load).

Memory per device, in bytes (P = crosscoder parameters = 2*L*D*C + L*C + L*D):
- crosscoder state, 16 P: fp32 weights, gradients and AdamW's two moments. Gradients stay
  allocated through the next forward (Lightning zeroes them just before backward), and
  under DDP they are views into the gradient buckets (gradient_as_bucket_view), so a world
  of ranks adds nothing. Mixed precision adds 2 P: the half-precision copies of the weights
  that autocast makes for the matmuls and the decoder's half-precision weight gradient.
- one micro-batch of B tokens: ACT_LBC tensors of [L, B, C] in the compute dtype (at the
  backward's peak through the ReLU: the saved features, the features' gradient and the
  pre-activations' gradient) and ACT_BLD fp32 tensors of [B, L, D] (the batch, its
  normalised copy, the reconstruction, the error terms and their gradients).
- the shuffle buffer, in host memory (sal.training.stream.ShuffleBuffer): its capacity plus
  the batches drained from it, at most twice its capacity of [tokens, L, D] activations in
  the subject model's dtype. It is on the device only when the device is the CPU.
- the subject model's weights in its dtype, and one forward of docs_per_forward documents
  of max_tokens_per_instance tokens: SUBJECT_ACT_PER_TOKEN_D + 3 L values per token and
  d_model unit (the block's MLP and attention, the captured residual stream, its stacked and
  masked copies). That forward runs when the data loader fetches a batch, between training
  steps, so the peak holds the larger of it and the micro-batch, not both.
- on a GPU, CUDA_RESERVED_GIB that tensors never get.
`tests/training/test_plan.py` checks the crosscoder and buffer parts against the measured
peak of real CPU training steps at three shapes; `benchmarks/plan_memory_bench.py` prints
the comparison.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from sal import atomic

GIB = 2**30
STATE_BYTES_PER_PARAM = 16
"""fp32 weights, gradients, AdamW's two moments."""
MIXED_BYTES_PER_PARAM = 2
"""Autocast's half-precision weight copies and the decoder's half-precision gradient."""
ACT_LBC = 3
"""[L, B, C] tensors alive at the backward pass's peak (see the module docstring)."""
ACT_BLD = 8
"""fp32 [B, L, D] tensors alive at the peak."""
BUFFER_CAPACITIES = 2
"""The shuffle buffer's storage plus the drained batches still referenced."""
SUBJECT_ACT_PER_TOKEN_D = 24
"""Values per token per d_model unit alive inside one decoder block of the subject model's
forward (MLP intermediates up to 3 x 5.4 D for Qwen2.5's widest ratio, attention, residual),
besides the 3 L of the captured layers."""
CUDA_RESERVED_GIB = 1.0
"""A GPU's memory that tensors never get: the CUDA context, NCCL's buffers, the caching
allocator's rounding."""
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def crosscoder_params(n_layers: int, d_model: int, n_features: int) -> int:
    return 2 * n_layers * d_model * n_features + n_layers * n_features + n_layers * d_model


def world_size(devices, num_nodes: int) -> int:
    """Processes in the run: devices per node (\"auto\": the visible GPUs, else 1) x nodes."""
    if devices == "auto":
        import torch

        devices = torch.cuda.device_count() or 1
    return int(devices) * int(num_nodes)


def device_memory_gib(trainer) -> float:
    """What one device holds: trainer.device_memory_gib when the preset says, else the
    visible GPU's memory, else this host's RAM (CPU training)."""
    if trainer.device_memory_gib is not None:
        return float(trainer.device_memory_gib)
    if trainer.accelerator in ("gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / GIB
        raise ValueError("trainer.accelerator is a GPU but none is visible: set trainer.device_memory_gib to plan "
                         "for the GPUs the job will run on (e.g. 80 for an A100-80GB).")
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


@dataclass
class TrainPlan:
    layers: list[int]
    world_size: int
    global_batch_instances: int
    per_rank_instances: int
    micro_batch_instances: int
    accumulate_grad_batches: int
    tokens_per_instance: int
    tokens_per_step: int
    micro_batch_tokens: int
    docs_per_forward: int = 8
    """Documents per subject-model forward: optim.docs_per_forward, halved by the plan while
    one micro-batch of one instance does not fit and the subject's forward is the peak."""
    memory_gib: dict = field(default_factory=dict)
    """Per device, by component (see the module docstring)."""
    per_device_peak_gib: float = 0.0
    device_memory_gib: float = 0.0
    fits: bool = False
    flops_per_step: float = 0.0
    """Matmul FLOPs of one optimiser step over the global batch (10 * tokens * L * D * C)."""
    est_seconds_per_step: Optional[float] = None
    """At trainer.assumed_mfu of trainer.device_peak_tflops, when the peak is known."""
    precision: str = "32-true"

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: str | os.PathLike) -> Path:
        return atomic.write_json(path, self.to_dict())

    def format(self) -> str:
        mem = ", ".join(f"{k} {v:.2f}" for k, v in device_parts(self.memory_gib).items())
        lines = [
            f"monitored layers: {self.layers}",
            f"batch: {self.global_batch_instances} instances per optimiser step over {self.world_size} rank(s) = "
            f"{self.per_rank_instances} per rank = {self.accumulate_grad_batches} micro-batch(es) of "
            f"{self.micro_batch_instances}; {self.tokens_per_step:,} tokens per step "
            f"({self.micro_batch_tokens:,} per micro-batch); subject-model forwards of {self.docs_per_forward} "
            f"document(s)",
            f"peak memory per device: {self.per_device_peak_gib:.1f} GiB of {self.device_memory_gib:.1f} "
            f"({'fits' if self.fits else 'DOES NOT FIT'}; {mem} GiB)",
            *([f"host memory per rank for the shuffle buffer: {self.memory_gib['host_buffer']:.1f} GiB"]
              if "host_buffer" in self.memory_gib else []),
            f"matmul FLOPs per step: {self.flops_per_step:.3g}" + (
                f", about {self.est_seconds_per_step:.2f} s per step at the assumed MFU"
                if self.est_seconds_per_step is not None else ""),
        ]
        return "\n".join(lines)


def memory_gib(crosscoder_cfg, optim, model, trainer, n_layers: int, micro_instances: int) -> dict:
    """Memory by component, in GiB (see the module docstring). ``host_buffer`` is host memory
    per rank; everything else is on the device (the buffer too when the device is the CPU)."""
    L, D, C = n_layers, model.d_model, crosscoder_cfg.n_features
    P = crosscoder_params(L, D, C)
    mixed = trainer.precision in ("bf16-mixed", "16-mixed")
    compute_bytes = 2 if (mixed or trainer.precision == "bf16-true") else 4
    state = (STATE_BYTES_PER_PARAM + (MIXED_BYTES_PER_PARAM if mixed else 0)) * P
    B = micro_instances * optim.tokens_per_instance
    acts = ACT_LBC * L * B * C * compute_bytes + ACT_BLD * B * L * D * 4
    model_bytes = _BYTES.get(model.dtype, 4)
    buffer = BUFFER_CAPACITIES * optim.shuffle_buffer_tokens * L * D * model_bytes
    forward_tokens = optim.docs_per_forward * optim.max_tokens_per_instance
    forward = forward_tokens * D * (SUBJECT_ACT_PER_TOKEN_D + 3 * L) * model_bytes
    on_cpu = trainer.accelerator == "cpu"
    mem = {"crosscoder_state": state / GIB, "micro_batch": acts / GIB, "subject_weights": model.n_params * model_bytes / GIB,
           "subject_forward": forward / GIB, "shuffle_buffer" if on_cpu else "host_buffer": buffer / GIB}
    if not on_cpu:
        mem["reserved"] = CUDA_RESERVED_GIB
    return mem


def device_parts(memory: dict) -> dict:
    """The components of ``memory_gib`` that live on the device (all but the host buffer)."""
    return {k: v for k, v in memory.items() if k != "host_buffer"}


def device_peak_gib(memory: dict) -> float:
    """The subject model's forward runs while the data loader fetches the next batch, between
    training steps, so its activations and the micro-batch's are never alive together."""
    on_device = device_parts(memory)
    transient = {"micro_batch", "subject_forward"}
    return sum(v for k, v in on_device.items() if k not in transient) + max(memory["micro_batch"],
                                                                            memory["subject_forward"])


def make_plan(crosscoder_cfg, optim, model, trainer, layers: Sequence[int], device_gib: Optional[float] = None) -> TrainPlan:
    """The plan of a run: micro-batch from optim.micro_batch_instances, or else the largest
    divisor of the rank's share whose peak fits the device."""
    world = world_size(trainer.devices, trainer.num_nodes)
    if optim.batch_instances % world:
        raise ValueError(f"optim.batch_instances={optim.batch_instances} (the global batch) does not split over "
                         f"{world} ranks: use a multiple of {world}.")
    share = optim.batch_instances // world
    device_gib = device_memory_gib(trainer) if device_gib is None else device_gib
    if optim.micro_batch_instances is not None:
        if share % optim.micro_batch_instances:
            raise ValueError(f"optim.micro_batch_instances={optim.micro_batch_instances} does not divide the rank's "
                             f"share of the global batch ({share} = {optim.batch_instances} / {world} ranks).")
        candidates = [optim.micro_batch_instances]
    else:
        candidates = [m for m in range(share, 0, -1) if share % m == 0]
    docs = optim.docs_per_forward
    while True:
        chosen = None
        for micro in candidates:
            mem = memory_gib(crosscoder_cfg, dataclasses.replace(optim, docs_per_forward=docs), model, trainer, len(layers), micro)
            chosen = (micro, mem)
            if device_peak_gib(mem) <= device_gib:
                break
        micro, mem = chosen
        # The subject's forward batch only sets throughput: halve it before giving up when
        # it is what sets the peak.
        if device_peak_gib(mem) <= device_gib or docs == 1 or mem["subject_forward"] < mem["micro_batch"]:
            break
        docs //= 2
    if optim.shuffle_buffer_tokens < micro * optim.tokens_per_instance:
        raise ValueError(f"optim.shuffle_buffer_tokens={optim.shuffle_buffer_tokens} is smaller than one micro-batch "
                         f"({micro} x {optim.tokens_per_instance} tokens): raise it to at least twice that for real "
                         f"mixing, or set optim.micro_batch_instances lower.")
    peak = device_peak_gib(mem)
    tokens = optim.batch_instances * optim.tokens_per_instance
    flops = 10.0 * tokens * len(layers) * model.d_model * crosscoder_cfg.n_features
    seconds = None
    if trainer.device_peak_tflops:
        seconds = flops / world / (trainer.device_peak_tflops * 1e12 * trainer.assumed_mfu)
    return TrainPlan(layers=list(layers), world_size=world, global_batch_instances=optim.batch_instances,
                     per_rank_instances=share, micro_batch_instances=micro, accumulate_grad_batches=share // micro,
                     tokens_per_instance=optim.tokens_per_instance, tokens_per_step=tokens,
                     micro_batch_tokens=micro * optim.tokens_per_instance, docs_per_forward=docs,
                     memory_gib={k: round(v, 4) for k, v in mem.items()}, per_device_peak_gib=round(peak, 3),
                     device_memory_gib=round(device_gib, 3), fits=peak <= device_gib, flops_per_step=flops,
                     est_seconds_per_step=seconds, precision=trainer.precision)


def refusal(plan: TrainPlan) -> str:
    """The message when even a micro-batch of one instance does not fit."""
    m = plan.memory_gib
    on_device = device_parts(m)
    biggest = max(on_device, key=on_device.get)
    fixes = {
        "crosscoder_state": "fewer features (crosscoder.n_features) or fewer monitored layers",
        "micro_batch": "fewer tokens per instance (optim.tokens_per_instance)",
        "shuffle_buffer": "a smaller shuffle buffer (optim.shuffle_buffer_tokens)",
        "host_buffer": "a smaller shuffle buffer (optim.shuffle_buffer_tokens)",
        "subject_weights": "a GPU with more memory",
        "subject_forward": "fewer documents per subject-model forward (optim.docs_per_forward)",
        "reserved": "a GPU with more memory",
    }
    return (f"Training cannot fit: one instance per micro-batch needs {plan.per_device_peak_gib:.1f} GiB per device, "
            f"the device has {plan.device_memory_gib:.1f} GiB (largest part: {biggest} {m[biggest]:.1f} GiB). "
            f"Use {fixes[biggest]}, or set trainer.device_memory_gib if the device is larger. "
            f"`python train.py ... plan=true` prints the whole plan.")
