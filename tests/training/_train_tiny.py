"""Train a crosscoder on a tiny random Llama: the subprocess behind the resume and DDP tests.

Run as a script (Lightning's DDP launcher re-executes it once per extra rank):
    python tests/training/_train_tiny.py RUN_DIR --max-steps 30 [--devices 2 --strategy ddp]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch.callbacks import Callback  # noqa: E402

from sal.config.crosscoder import CrosscoderConfig, OptimConfig  # noqa: E402
from sal.config.trainer import TrainerConfig  # noqa: E402
from sal.training.run import train_crosscoder  # noqa: E402


def tiny_llama(seed: int = 0):
    """The 4-block random Llama of the test plan, with sal's offline byte tokenizer."""
    from sal.models import tiny_llama as build, tiny_tokenizer

    tok = tiny_tokenizer()
    return build(tok, n_layers=4, d_model=32, seed=seed), tok


def tiny_texts(n: int = 64) -> list[str]:
    # A distinct first token per document keeps every token's activations unique (causal model).
    return [f"{chr(65 + i % 26)}{chr(97 + i // 26)} problem {i}: the square root of {i * i} is {i}; "
            f"{i} + {i} = {2 * i}." for i in range(n)]


class SlowSteps(Callback):
    """Sleeps after each step so a test can kill the run mid-training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


class DumpWeights(Callback):
    """Each rank writes its final crosscoder weights (to compare ranks after DDP)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.micro_batch_tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.micro_batch_tokens.append(int(batch.shape[0]))

    def on_train_end(self, trainer, pl_module) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in pl_module.crosscoder.state_dict().items()}
        save_file(state, str(self.out_dir / f"rank{trainer.global_rank}.safetensors"))
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"global_step": trainer.global_step, "world_size": trainer.world_size,
                        "accumulate_grad_batches": trainer.accumulate_grad_batches,
                        "micro_batch_tokens": self.micro_batch_tokens,
                        "summary": pl_module.summary() if trainer.is_global_zero else None}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--dump-weights", action="store_true")
    p.add_argument("--micro-batch", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    model, tok = tiny_llama()
    cc = CrosscoderConfig(n_features=128, dead_window_tokens=1000)
    opt = OptimConfig(max_steps=args.max_steps, batch_instances=4, tokens_per_instance=32, max_tokens_per_instance=48,
                      docs_per_forward=4, shuffle_buffer_tokens=512, checkpoint_every_n_steps=args.ckpt_every, lr=1e-3,
                      micro_batch_instances=args.micro_batch)
    tcfg = TrainerConfig(accelerator="cpu", devices=args.devices, strategy=args.strategy, enable_progress_bar=False)
    callbacks = []
    if args.step_sleep:
        callbacks.append(SlowSteps(args.step_sleep))
    if args.dump_weights:
        run_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(DumpWeights(run_dir))
    result = train_crosscoder(cc, opt, tcfg, model, tok, tiny_texts(), [0, 2, 4], run_dir, model_name="tiny",
                              callbacks=callbacks)
    print(f"RESULT resumed_from={result.resumed_from_step} global_step={result.global_step}", flush=True)


if __name__ == "__main__":
    main()
