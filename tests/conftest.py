import os

import pytest

# Tests never reach a hub: fail fast instead of hanging on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_model():
    """The `tiny-random` subject model (7 random Llama blocks, byte-level tokenizer)."""
    from sal.config.model import ModelConfig
    from sal.models import load_subject_model

    cfg = ModelConfig(name="tiny-random", source="tiny", init="random", n_layers=7, d_model=64,
                      tiny_config=dict(intermediate_size=128, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=512))
    return load_subject_model(cfg)
