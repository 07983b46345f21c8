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
    """The `tiny-random` subject model of conf/model/tiny-random.yaml (7 random Llama blocks,
    byte-level tokenizer), in the dtype `auto` resolves to on this machine."""
    from sal.models import load_subject_model, named_model_config

    return load_subject_model(named_model_config("tiny-random", dtype="auto"))
