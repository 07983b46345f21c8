"""Rule judgments per second of the offline hf_local judge (SmolLM2-135M), before and after
the batched scorer, measured side by side in one run on a fixed set of 50 rules.

- "before": the scorer this project shipped until the batched one (kept below as
  `LegacyHFLocalJudge`): one item at a time, the whole prompt through the model, a deep copy
  of the KV cache per answer string. Timed in bfloat16 (the demo's dtype then, emulated on
  CPUs without native bf16) and in the dtype `auto` picks here.
- "after": `HFLocalJudge` as configured by default (dtype auto, hf_batch_size 8).

Labels must be identical between before and after in the same dtype, and equal to the fixed
set's recorded labels (tests/data/hf_judge_rules50.jsonl; the regression test
tests/judge/test_hf_local_regression.py checks the same).

    .venv/bin/python benchmarks/hf_judge_bench.py [--n 50] [--n-bf16 8]
    .venv/bin/python benchmarks/hf_judge_bench.py --write-fixture --from-run runs/smollm2-135m/default
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from sal.config.judge import JudgeConfig
from sal.hardware import cpu_capability, native_bf16_cpu, resolve_dtype
from sal.judge import rule_item
from sal.judge.hf_local import HFLocalJudge
from sal.models import load_named_model

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "hf_judge_rules50.jsonl"


class LegacyHFLocalJudge(HFLocalJudge):
    """The scorer before batching, for comparison only: per prompt, a full forward of the
    prompt, then one forward per answer string on a deep copy of the KV cache."""

    @property
    def workers(self) -> int:
        return 1

    def _legacy_forward(self, ids: list[int], cache):
        device = next(self._model.parameters()).device
        out = self._model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
        return out.logits[0].float().log_softmax(-1), out.past_key_values

    def _choice_logliks(self, prompts: Sequence[str], prefix: str, choices: Sequence[str]) -> list[list[float]]:
        out = []
        for prompt in prompts:
            logprobs, cache = self._legacy_forward(self._context_ids(prompt) + self._encode(prefix), None)
            last = logprobs[-1]
            scores = []
            for choice in choices:
                ids = self._encode(choice)
                branch = copy.deepcopy(cache)
                logprobs, _ = self._legacy_forward(ids, branch)
                scores.append(float(last[ids[0]]) + sum(float(logprobs[j, ids[j + 1]]) for j in range(len(ids) - 1)))
            out.append(scores)
        return out


def load_fixture(path: Path = FIXTURE) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def items_of(rows: list[dict]):
    return [rule_item(r["p1"], r["p2"], r["q"], r["premises"], r["conclusion"]) for r in rows]


def judge_rules(judge_cls, model, tokenizer, items, batch_size: int = 8) -> tuple[list[str], float]:
    cfg = JudgeConfig(backend="hf_local", cache_dir=None, hf_batch_size=batch_size)
    judge = judge_cls(cfg, model=model, tokenizer=tokenizer, model_id="smollm2-135m")
    start = time.perf_counter()
    results = judge.judge(items, progress=False)
    wall = time.perf_counter() - start
    if any(r.status != "ok" for r in results):
        raise RuntimeError(f"unlabelled rules: {[r.error for r in results if r.status != 'ok'][:3]}")
    return [r.label for r in results], wall


def write_fixture(run_dir: Path, n_per_arity: int) -> None:
    """50 rules of a finished run (25 per arity, the evaluate stage's sampler, seed 0) with
    the labels the legacy scorer gives them in float32."""
    import pandas as pd

    from sal.pipeline.analyses.single import sample_rules

    rules = pd.read_parquet(run_dir / "rules" / "rules.parquet")
    expl = pd.read_parquet(run_dir / "features" / "explanations.parquet")
    text = dict(zip(expl.feature.astype(int), expl.explanation))
    sample, _ = sample_rules(rules, {f for f, t in text.items() if t is not None}, n_per_arity, seed=0)
    rows = [{"p1": int(r.p1), "p2": int(r.p2), "q": int(r.q),
             "premises": [text[int(r.p1)]] + ([text[int(r.p2)]] if r.p2 >= 0 else []),
             "conclusion": text[int(r.q)]} for r in sample.itertuples()]
    model, tokenizer = load_named_model("smollm2-135m", dtype="float32")
    labels, _ = judge_rules(LegacyHFLocalJudge, model, tokenizer, items_of(rows))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text("".join(json.dumps({**row, "label_float32": label}) + "\n" for row, label in zip(rows, labels)))
    print(f"wrote {len(rows)} rules to {FIXTURE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="rules judged by the float32 runs")
    parser.add_argument("--n-bf16", type=int, default=8, help="rules judged by the (slow) legacy bfloat16 run")
    parser.add_argument("--write-fixture", action="store_true")
    parser.add_argument("--from-run", type=Path, default=Path("runs/smollm2-135m/default"))
    args = parser.parse_args()
    if args.write_fixture:
        return write_fixture(args.from_run, 25)

    rows = load_fixture()[:args.n]
    items = items_of(rows)
    auto = resolve_dtype("auto", "cpu")
    print(f"CPU capability {cpu_capability()}, native bf16 {native_bf16_cpu()}, torch threads "
          f"{torch.get_num_threads()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"dtype auto -> {auto}")
    models = {dtype: load_named_model("smollm2-135m", dtype=dtype) for dtype in {"bfloat16", auto}}
    runs = [("before", "bfloat16", LegacyHFLocalJudge, items[:args.n_bf16]),
            ("before", auto, LegacyHFLocalJudge, items),
            ("after", auto, HFLocalJudge, items)]
    rates, labels = {}, {}
    for name, dtype, cls, its in runs:
        got, wall = judge_rules(cls, *models[dtype], its)
        rates[name, dtype], labels[name, dtype] = len(its) / wall, got
        print(f"{name:>6} {dtype:>8}: {len(its):3d} rules in {wall:6.1f} s = {len(its) / wall:5.2f} rules/s")
    after = rates["after", auto]
    print(f"after ({auto}) vs before (bfloat16, the demo's old setting): {after / rates['before', 'bfloat16']:.1f}x")
    print(f"after ({auto}) vs before ({auto}), the scorer alone:          {after / rates['before', auto]:.1f}x")
    same = labels["after", auto] == labels["before", auto]
    fixed = [r["label_float32"] for r in rows]
    print(f"labels after == before in {auto}: {same}; == the fixed set's float32 labels: "
          f"{labels['after', auto] == fixed if auto == 'float32' else 'n/a (not float32)'}")
    bf16 = labels["before", "bfloat16"]
    print(f"bfloat16 labels agree with {auto} on {sum(a == b for a, b in zip(bf16, labels['before', auto]))}"
          f"/{len(bf16)} rules")


if __name__ == "__main__":
    main()
