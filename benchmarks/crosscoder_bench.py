"""Crosscoder training-step throughput: tokens/s and achieved FLOP rate relative to the
machine's dense matmul rate, both measured in this run.

FLOPs counted per step (matmuls only; elementwise work and the optimiser count as zero):
    forward  = encoder 2*B*L*D*C + decoder 2*B*L*C*D = 4*B*L*D*C
    backward = decoder grads wrt input and weights 4*B*L*D*C + encoder grad wrt weights
               2*B*L*D*C (the activations need no gradient, so it is never computed)
    step     = 10*B*L*D*C executed  (the "3 x forward" convention would claim 12*B*L*D*C;
               that number is printed too, but the fractions use the executed 10*B*L*D*C)
The reference rate is the best of several dense square matmuls (fp32 on CPU; bf16 on GPU)
of the same dtype the step uses, so "fraction" = achieved / measured-dense rate (model-FLOPs
utilisation against what this machine's GEMM can do, not against a datasheet number).

    .venv/bin/python benchmarks/crosscoder_bench.py                    # CPU, fp32
    .venv/bin/python benchmarks/crosscoder_bench.py --device cuda --dtype bf16   # paper shapes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sal.crosscoder import Crosscoder, flops_per_token  # noqa: E402

PRESETS = {
    # SmolLM2-135M width, 8 layers, a demo-sized dictionary: what the offline default trains.
    "cpu": dict(d_model=576, n_layers=8, n_features=4096, tokens=1024),
    # Qwen2.5-7B: D=3584, L=8, C=2^15 (the paper's shapes), per-GPU batch of 8K tokens.
    "paper": dict(d_model=3584, n_layers=8, n_features=32768, tokens=8192),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 8) -> float:
    """Best dense n x n x n matmul rate (FLOP/s)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    _sync(device)
    best = float("inf")
    inner = 1 if device.type == "cpu" else 20
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n ** 3 / best


def make_step(cc: Crosscoder, x: torch.Tensor, dtype: torch.dtype, optimizer: bool):
    opt = None
    if optimizer:
        try:
            opt = torch.optim.AdamW(cc.parameters(), lr=2e-4, eps=6.25e-10, weight_decay=0.0, fused=True)
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW(cc.parameters(), lr=2e-4, eps=6.25e-10, weight_decay=0.0)
    autocast = dtype != torch.float32

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=autocast):
            out = cc.loss(x, 5e-3)
        out.total.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            for p in cc.parameters():
                p.grad = None

    return step


def time_step(step, device: torch.device, repeats: int) -> float:
    step()
    step()  # warm-up (allocator, kernels, optimiser state)
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on GPU")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: cpu on CPU, paper on GPU")
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layers", type=int, default=None)
    p.add_argument("--n-features", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4, help="alternate matmul and step measurements this many times")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--matmul-n", type=int, default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    shape = dict(PRESETS[args.preset or ("cpu" if device.type == "cpu" else "paper")])
    for k in ("tokens", "d_model", "n_layers", "n_features"):
        if getattr(args, k) is not None:
            shape[k] = getattr(args, k)
    B, L, D, C = shape["tokens"], shape["n_layers"], shape["d_model"], shape["n_features"]
    matmul_n = args.matmul_n or (2048 if device.type == "cpu" else 8192)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(0)
    cc = Crosscoder(L, D, C).to(device)
    x = torch.randn(B, L, D, device=device)
    flops = flops_per_token(L, D, C) * B
    flops_conv = flops_per_token(L, D, C, input_grad=True) * B
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}) "
          f"dtype={dtype_name}  B={B} tokens, L={L}, D={D}, C={C}")
    print(f"matmul FLOPs per step: {flops / 1e9:.1f} GFLOP executed (10*B*L*D*C); "
          f"{flops_conv / 1e9:.1f} by the 3x-forward convention (12*B*L*D*C)")

    rows = {"matmul": [], "fwd+bwd": [], "fwd+bwd+adamw": []}
    steps = {"fwd+bwd": make_step(cc, x, dtype, optimizer=False), "fwd+bwd+adamw": make_step(cc, x, dtype, optimizer=True)}
    for _ in range(args.rounds):  # interleaved: a shared machine's load hits both alike
        rows["matmul"].append(matmul_rate(device, dtype, matmul_n))
        for name, step in steps.items():
            rows[name].append(time_step(step, device, args.repeats))
    peak = max(rows["matmul"])
    print(f"dense {dtype_name} matmul ({matmul_n}^3): best {peak / 1e9:.1f} GFLOP/s, "
          f"median {statistics.median(rows['matmul']) / 1e9:.1f}")
    for name in ("fwd+bwd", "fwd+bwd+adamw"):
        t = min(rows[name])
        rate = flops / t
        print(f"{name:14s} {t * 1e3:8.1f} ms/step  {B / t:10.0f} tokens/s  {rate / 1e9:8.1f} GFLOP/s  "
              f"fraction of dense matmul rate: {rate / peak:.3f}  (3x-forward convention: {flops_conv / t / peak:.3f})")


if __name__ == "__main__":
    main()
