"""Subject-model loading: the packaged GGUF default, offline, and the tiny random model."""

import pytest
import torch

from sal.config.model import ModelConfig
from sal.models import gguf_cache_dir, load_named_model, load_subject_model, named_model_config


def test_offline_default_loads_from_the_package_with_network_off(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig()
    model, tok = load_subject_model(cfg)
    assert (gguf_cache_dir(cfg) / "config.json").exists()  # converted once, then read from the cache
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = tok(["2 + 2 ="], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()


def test_random_init_keeps_architecture_and_changes_weights():
    pretrained, _ = load_named_model("smollm2-135m")
    cfg = named_model_config("smollm2-135m")
    cfg.init = "random"
    random_model, _ = load_subject_model(cfg)
    w0 = pretrained.model.layers[3].mlp.up_proj.weight
    w1 = random_model.model.layers[3].mlp.up_proj.weight
    assert w0.shape == w1.shape and not torch.allclose(w0, w1)


def test_model_file_shapes_are_checked_against_the_loaded_model():
    cfg = named_model_config("tiny-random")
    model, _ = load_subject_model(cfg)
    assert model.config.num_hidden_layers == cfg.n_layers
    cfg.tiny_config = dict(cfg.tiny_config, num_hidden_layers=5)
    with pytest.raises(ValueError, match="n_layers=7"):
        load_subject_model(cfg)


def test_unknown_model_file_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="qwen2.5-7b"):
        named_model_config("qwen-99b")


def test_local_directory_source_reloads_identical_weights(tmp_path):
    tiny, tok = load_subject_model(named_model_config("tiny-random"))
    tiny.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = named_model_config("tiny-random")
    cfg.source, cfg.local_path, cfg.init = "local", str(tmp_path), "pretrained"
    local, local_tok = load_subject_model(cfg)
    ids = tok(["x = 1"], return_tensors="pt").input_ids
    assert local_tok(["x = 1"], return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(local(ids).logits, tiny(ids).logits)


def test_tiny_tokenizer_numbers_bytes_the_same_in_every_process():
    """Byte b is token 3 + b: the ids must not depend on a hash order that changes per
    process (a rerun after a kill, or the next stage, would read the same text as other tokens)."""
    import subprocess
    import sys

    from sal.models import tiny_tokenizer

    text = "Hi! \u00e9\n\t~"
    expected = [3 + b for b in text.encode()]
    tok = tiny_tokenizer()
    assert tok(text)["input_ids"] == expected and tok.decode(expected) == text
    code = f"from sal.models import tiny_tokenizer; print(tiny_tokenizer()({text!r})['input_ids'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(expected)
