"""Generation as its own step, through a stand-in `vllm` with the real package's classes and
signatures (tests/fakes/vllm): its own process with no HF model in it, stop strings passed,
only rank 0 generating in a world of two, and a SIGKILL mid-generation resumed without
duplicates."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes"

SCRIPT = textwrap.dedent("""
    import sys
    from hydra import compose, initialize_config_dir
    from sal.config.schema import register_configs, validate_config
    from sal.pipeline.generate import generate_corpus
    register_configs()
    with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
        cfg = validate_config(compose(config_name="train", overrides=sys.argv[2:]))
    out = generate_corpus(cfg)
    print("DONE", out)
""")


@pytest.fixture(scope="module")
def local_tiny(tmp_path_factory):
    """The tiny random model saved as a model directory (what vLLM loads)."""
    from sal.config.model import ModelConfig
    from sal.models import load_subject_model

    path = tmp_path_factory.mktemp("tiny-model")
    model, tok = load_subject_model(ModelConfig(name="tiny-random", source="tiny", init="random", n_layers=7,
                                                d_model=64, tiny_config=dict(intermediate_size=128,
                                                num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=512)))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _start(tmp_path, local_tiny, rank, world=2, **env):
    overrides = ["model=tiny-random", "model.source=local", f"model.local_path={local_tiny}",
                 f"paths.cache_dir={tmp_path / 'cache'}", "data.generation.backend=vllm", "data.max_questions=6",
                 "data.generation.batch_size=9", "data.max_doc_tokens=400", "data.generation.max_new_tokens=12"]
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKES), str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   FAKE_VLLM_LOG=str(tmp_path / "vllm.jsonl"), RANK=str(rank), WORLD_SIZE=str(world), **env)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(ROOT / "conf"), *overrides], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _log(tmp_path):
    return [json.loads(line) for line in (tmp_path / "vllm.jsonl").read_text().splitlines()]


def test_vllm_generation_runs_alone_on_rank_zero_with_stop_strings(tmp_path, local_tiny):
    waiting = _start(tmp_path, local_tiny, rank=1)  # started first: it must wait, not generate
    leader = _start(tmp_path, local_tiny, rank=0)
    out0, err0 = leader.communicate(timeout=300)
    out1, err1 = waiting.communicate(timeout=300)
    assert leader.returncode == 0, err0[-3000:]
    assert waiting.returncode == 0, err1[-3000:]
    assert "DONE" in out0 and out0.split("DONE")[1] == out1.split("DONE")[1]  # same corpus directory
    events = _log(tmp_path)
    assert {e["rank"] for e in events} == {"0"}  # only rank 0 generated
    assert {e["pid"] for e in events} != {leader.pid}  # in a process of its own
    assert all(e["hf_models_alive"] == [] for e in events)  # no HF model loaded where vLLM runs
    init = [e for e in events if e["event"] == "init"]
    assert len(init) == 1 and init[0]["gpu_memory_utilization"] == 0.9 and init[0]["tensor_parallel_size"] == 1
    params = [p for e in events if e["event"] == "generate" for p in e["params"]]
    stops = ["</answer>", "User:", "Human:", "Assistant:"]  # the R1-Zero template's (as Open-Reasoner-Zero's)
    assert params and all(p["stop"] == stops and p["include_stop_str_in_output"] for p in params)
    assert all(1 <= p["max_tokens"] <= 12 for p in params)
    corpus_dir = Path(out0.split("DONE")[1].strip())
    rule_set = pd.read_parquet(corpus_dir / "rule_set.parquet")
    # the fake ends its answer after 7-18 words: within 12 tokens some finish at "</answer>"
    finished = rule_set[rule_set.finished]
    assert len(finished) and finished.response.str.endswith("</answer>").all()
    assert not rule_set[~rule_set.finished].response.str.contains("</answer>").any()
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    assert manifest["rule_set"]["n_finished"] == len(finished) and manifest["generation"]["backend"] == "vllm"


def test_a_sigkilled_generation_resumes_without_duplicates(tmp_path, local_tiny):
    killed = _start(tmp_path, local_tiny, rank=0, world=1, FAKE_VLLM_KILL_AT="2")
    _, err = killed.communicate(timeout=300)
    assert killed.returncode != 0 and "exited with status -9" in err
    batches = sorted((tmp_path / "cache" / "corpus").glob("*/batches/*.parquet"))
    assert [b.name for b in batches] == ["batch_000000.parquet"]  # the killed batch left nothing
    resumed = _start(tmp_path, local_tiny, rank=0, world=1)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    seeds = [e["params"][0]["seed"] for e in _log(tmp_path) if e["event"] == "generate"]
    # batch b samples with seed 0 + b; the kill struck as batch 1 started, before anything was
    # logged or written: every batch was generated exactly once, batch 0 before the kill
    assert len(seeds) > 2 and seeds == list(range(len(seeds)))
    corpus_dir = Path(out.split("DONE")[1].strip())
    both = pd.read_parquet(corpus_dir / "responses.parquet")
    assert both.idx.tolist() == list(range(len(both)))
    assert len(pd.read_parquet(corpus_dir / "corpus.parquet")) == 6
