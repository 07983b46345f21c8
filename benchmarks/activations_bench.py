"""Residual-stream extraction vs a plain forward with logits, same batch, same run.

    python benchmarks/activations_bench.py [--model smollm2-135m] [--batch 8] [--seq 256]

Prints tokens/s of `sal.activations.residual_stream` at the model's 8 default layers and of
`model(...)` (which also runs the final norm and the LM head), and their ratio. Extraction
is faster because the pass stops at the deepest monitored block and never computes logits.
"""

from __future__ import annotations

import argparse
import time

import torch

from sal.activations import residual_stream
from sal.config.model import ModelConfig
from sal.layers import even_layers
from sal.models import load_subject_model

MODELS = {
    "smollm2-135m": ModelConfig(),
    "tiny-random": ModelConfig(name="tiny-random", source="tiny", init="random", n_layers=7, d_model=64,
                               tiny_config=dict(intermediate_size=128, num_attention_heads=4,
                                                num_key_value_heads=2, max_position_embeddings=4096)),
}


def best_of_interleaved(fns, repeats: int) -> list[float]:
    """Best time of each function, run alternately so that load from other processes on the
    machine hits both sides alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model, tok = load_subject_model(MODELS[args.model])
    layers = even_layers(model.config.num_hidden_layers)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size, (args.batch, args.seq), generator=g)
    attn = torch.ones_like(ids)
    n_tokens = ids.numel()

    def extract():
        residual_stream(model, ids, attn, layers)

    def full_forward():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=attn, use_cache=False)

    t_full, t_ext = best_of_interleaved([full_forward, extract], args.repeats)
    print(f"model={args.model} layers={layers} batch={args.batch}x{args.seq} threads={torch.get_num_threads()}")
    print(f"forward with logits      : {n_tokens / t_full:10.1f} tokens/s")
    print(f"residual_stream (8 pts)  : {n_tokens / t_ext:10.1f} tokens/s")
    print(f"speed-up (extract / full): {t_full / t_ext:10.2f}x")


if __name__ == "__main__":
    main()
