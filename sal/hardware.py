"""What this machine computes fast, and the precision that follows from it.

bfloat16 halves the memory of weights and activations, but on a CPU it is fast only where
the instruction set has bf16 arithmetic (AVX512_BF16, AMX-BF16, Arm's BF16 extension).
Elsewhere oneDNN and ATen emulate it by converting every operand to float32 and back, which
costs several times the float32 run time. So `dtype: auto` means bfloat16 on a GPU or on a
CPU with native bf16 and float32 otherwise; an explicit dtype is always kept.
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

log = logging.getLogger("sal")

AUTO = "auto"
DTYPES = ("float32", "bfloat16", "float16")
"""dtype names a config may give besides "auto"."""


@functools.lru_cache(maxsize=None)
def cpu_capability() -> str:
    """ATen's dispatch level for this CPU ("AVX2", "AVX512", "DEFAULT", ...)."""
    return torch.backends.cpu.get_cpu_capability()


@functools.lru_cache(maxsize=None)
def native_bf16_cpu() -> bool:
    """True when this CPU has bf16 arithmetic in hardware (not emulated)."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        c = caps()
        if c.get("architecture") in ("x86_64", "x86", "i686"):
            return bool(c.get("avx512_bf16") or c.get("amx_bf16"))
    # Older torch, or Arm: oneDNN's own check (Arm BF16, or AVX512 core on x86).
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def is_cuda_device(device: str | torch.device) -> bool:
    """Whether a device spec ("auto", "cpu", "cuda:1", torch.device) ends up on a GPU."""
    if str(device) == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def resolve_dtype(requested: str, device: str | torch.device = "auto") -> str:
    """The dtype name to load weights in: `requested` unless it is "auto"."""
    if requested != AUTO:
        if requested not in DTYPES:
            raise ValueError(f"dtype {requested!r}: choose auto or one of {DTYPES}.")
        return requested
    return "bfloat16" if is_cuda_device(device) or native_bf16_cpu() else "float32"


def describe(device: str | torch.device = "auto") -> dict:
    """The facts behind a dtype choice, for logs and the run's saved config."""
    info = {"cpu_capability": cpu_capability(), "cpu_native_bf16": native_bf16_cpu(),
            "torch": str(torch.__version__), "cuda": is_cuda_device(device)}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def log_choice(what: str, requested: str, resolved: str, device: str | torch.device = "auto",
               logger: Optional[logging.Logger] = None) -> None:
    """One line saying which dtype `what` runs in and why."""
    info = describe(device)
    where = f"GPU {info['gpu']}" if info["cuda"] else (
        f"CPU {info['cpu_capability']}, native bf16 {'yes' if info['cpu_native_bf16'] else 'no'}")
    how = "chosen by dtype=auto" if requested == AUTO else "as configured"
    (logger or log).info("%s runs in %s (%s; %s)", what, resolved, how, where)
