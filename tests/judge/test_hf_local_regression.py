"""The offline judge's labels on a fixed set of 50 rules of the offline default are those of
the scorer before batching (recorded in tests/data/hf_judge_rules50.jsonl by
`benchmarks/hf_judge_bench.py --write-fixture`: one item at a time, full forwards, float32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sal.config.judge import JudgeConfig
from sal.judge import rule_item
from sal.judge.hf_local import HFLocalJudge

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "hf_judge_rules50.jsonl"


@pytest.mark.slow
def test_batched_judge_reproduces_the_recorded_labels_of_50_rules():
    from sal.models import load_named_model

    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    assert len(rows) == 50 and {len(r["premises"]) for r in rows} == {1, 2}
    model, tokenizer = load_named_model("smollm2-135m", dtype="float32")  # the recorded labels' dtype
    judge = HFLocalJudge(JudgeConfig(backend="hf_local", cache_dir=None), model=model, tokenizer=tokenizer,
                         model_id="smollm2-135m")
    items = [rule_item(r["p1"], r["p2"], r["q"], r["premises"], r["conclusion"]) for r in rows]
    got = [j.label for j in judge.judge(items, progress=False)]
    want = [r["label_float32"] for r in rows]
    assert got == want, [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
