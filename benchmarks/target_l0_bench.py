"""Matched sparsity: does ``crosscoder.target_l0`` land where it is told?

On the same SmolLM2-135M activations and budget as ``frontier_bench.py`` (8 layers, C = 1,024,
256 steps x 512 tokens through the project's training loop, ``mse_reduction=sum``, alpha
starting at 16), one run per target L0 in distinct features per token. Printed per target:
the final alpha the controller froze, the training summary's distinct features per token (the
mean over the last 20 steps, what the controller measured), and the held-out figures of the
exported dictionary (distinct features, pairs, nmse), with the relative miss on held-out
tokens. The acceptance is a miss within 15%.

    .venv/bin/python benchmarks/target_l0_bench.py                  # 16 32 64
    .venv/bin/python benchmarks/target_l0_bench.py --targets 25 --start-alpha 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import frontier_bench as fb  # noqa: E402

from sal.config.crosscoder import CrosscoderConfig  # noqa: E402
from sal.crosscoder import Crosscoder  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=float, nargs="+", default=[16, 32, 64])
    p.add_argument("--start-alpha", type=float, default=16.0)
    p.add_argument("--reduction", choices=("sum", "mean"), default="sum")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--n-features", type=int, default=1024)
    p.add_argument("--batch-tokens", type=int, default=512)
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--decoder-bias", choices=("mean", "zero"), default="mean")
    p.add_argument("--work-dir", type=Path, default=fb.ROOT / "runs" / "frontier_bench")
    args = p.parse_args()
    s = fb.Setting(steps=args.steps, n_features=args.n_features, batch_tokens=args.batch_tokens, tokens=args.tokens,
                   decoder_bias=args.decoder_bias)
    print(fb.machine_header(), flush=True)
    t0 = time.perf_counter()
    ctx = fb.prepare(args, s)
    optim = fb.optim_config(s, ctx["cache_root"])
    print(f"decoder bias starts at {s.decoder_bias}")
    print(f"| target | final alpha | train: features | held out: features | pairs | nmse | dead | miss |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for target in args.targets:
        cc = CrosscoderConfig(arch="relu", n_features=s.n_features, seed=s.seed, dead_window_tokens=s.dead_window_tokens,
                              mse_reduction=args.reduction, sparsity_coef=args.start_alpha, target_l0=target,
                              init_decoder_bias=s.decoder_bias)
        run_dir = fb.run_dir_for(args.work_dir, f"target-{args.reduction}", target, cc, optim)
        export = fb.train_lightning(cc, optim, run_dir, ctx["model"], ctx["tokenizer"], ctx["train_docs"],
                                    ctx["layers"])
        final = json.loads((export / "config.json").read_text())["final_metrics"]
        m = fb.evaluate(Crosscoder.from_pretrained(export), ctx["heldout_NLD"])
        miss = m["l0_features"] / target - 1
        print(f"| {target:g} | {final['sparsity_coef']:.3g} | {final['l0_features']:.1f} | {m['l0_features']:.1f} | "
              f"{m['l0_pairs']:.1f} | {m['nmse']:.3f} | {100 * m['dead_frac']:.1f}% | {100 * miss:+.1f}% |",
              flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s; {fb.machine_header()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
