"""A training run stopped after a checkpoint and started again ends with the weights of a run
that was never stopped: the checkpoint holds the whole training state and the activation
stream resumes with exactly the batches the uninterrupted run had next."""

import pytest
import torch
from _train_tiny import tiny_llama, tiny_texts
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal.config.trainer import TrainerConfig
from sal.training.run import train_crosscoder

LAYERS = [0, 2, 4]


class Stop(Exception):
    pass


class StopAfter(Callback):
    """Raises after optimiser step ``step`` (a stand-in for a kill: no final checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Stop


def _train(run_dir, optim, callbacks=()):
    model, tok = tiny_llama()
    # target_l0: the sparsity controller's state is part of what must survive the restart
    cc = CrosscoderConfig(n_features=64, dead_window_tokens=256, target_l0=8, sparsity_coef=1e-2)
    tcfg = TrainerConfig(accelerator="cpu", enable_progress_bar=False)
    return train_crosscoder(cc, optim, tcfg, model, tok, tiny_texts(24), LAYERS, run_dir, model_name="tiny",
                            callbacks=list(callbacks))


@pytest.mark.parametrize("cache", [False, True])
def test_a_run_restarted_from_its_checkpoint_ends_with_the_uninterrupted_weights(tmp_path, cache):
    optim = OptimConfig(max_steps=16, batch_instances=2, tokens_per_instance=32, max_tokens_per_instance=48,
                        docs_per_forward=4, shuffle_buffer_tokens=256, checkpoint_every_n_steps=5, lr=2e-3,
                        activation_cache=str(tmp_path / "acts") if cache else None, cache_shard_tokens=300)
    ref = _train(tmp_path / "ref", optim)
    with pytest.raises(Stop):
        _train(tmp_path / "run", optim, [StopAfter(12)])  # 12: two steps after the checkpoint at 10
    again = _train(tmp_path / "run", optim)
    assert again.resumed_from_step == 10 and again.global_step == 16
    a, b = (load_file(str(d / "crosscoder" / "model.safetensors")) for d in (tmp_path / "ref", tmp_path / "run"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    timing = {"tokens_per_s"}
    assert {k: v for k, v in again.summary.items() if k not in timing} == \
        {k: v for k, v in ref.summary.items() if k not in timing}


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A failure while the checkpoint is being written keeps the previous one whole."""
    import sal.training.run as run_mod

    optim = OptimConfig(max_steps=4, batch_instances=2, tokens_per_instance=32, max_tokens_per_instance=48,
                        docs_per_forward=4, shuffle_buffer_tokens=256, checkpoint_every_n_steps=2)
    saves = []

    def failing_save(obj, f, *a, **kw):
        saves.append(str(f))
        if len(saves) == 2:
            with open(f, "wb") as fh:
                fh.write(b"truncated")
            raise Stop
        return real_save(obj, f, *a, **kw)

    real_save = torch.save
    monkeypatch.setattr(run_mod.torch, "save", failing_save)
    with pytest.raises(Stop):
        _train(tmp_path, optim)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert all(p != str(last) for p in saves)  # written under a temporary name
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
