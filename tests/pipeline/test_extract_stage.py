"""How the extract stage chooses between in-process and sharded counting."""

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

import sal.rules
from sal.config.rules import RulesConfig
from sal.config.trainer import TrainerConfig
from sal.pipeline import extract
from sal.rules.shard import make_fabric


@pytest.fixture
def calls(monkeypatch):
    seen = {}
    monkeypatch.setattr(sal.rules, "run_sharded", lambda *a, **kw: seen.update(sharded=(a, kw)))
    monkeypatch.setattr(sal.rules, "count_rules", lambda *a, **kw: seen.update(in_process=(a, kw)))
    return seen


def _count(tmp_path, trainer: TrainerConfig):
    cfg = SimpleNamespace(rules=RulesConfig(), trainer=trainer)
    extract.run_rule_counting(cfg, tmp_path, sp.csr_matrix(np.eye(3, dtype=np.int32)), allowed=None)


@pytest.mark.parametrize(
    "trainer, processes, nodes",
    [
        (TrainerConfig(accelerator="cpu", devices=2, strategy="ddp"), 2, 1),
        (TrainerConfig(accelerator="gpu", devices=8, num_nodes=4, strategy="ddp"), 8, 4),
        (TrainerConfig(accelerator="gpu", devices=1, num_nodes=2, strategy="ddp"), 1, 2),
    ],
)
def test_ddp_trainers_shard_over_every_rank_of_every_node(tmp_path, calls, trainer, processes, nodes):
    _count(tmp_path, trainer)
    args, kwargs = calls["sharded"]
    assert args[2] == processes and kwargs["num_nodes"] == nodes
    assert "in_process" not in calls


def test_single_process_trainer_counts_in_process(tmp_path, calls):
    _count(tmp_path, TrainerConfig(accelerator="cpu", devices=1))
    assert "in_process" in calls and "sharded" not in calls


def test_fabric_world_spans_nodes():
    assert make_fabric(2, num_nodes=3).world_size == 6
