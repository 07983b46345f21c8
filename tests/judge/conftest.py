"""Fixtures for the judge tests: a character tokenizer with a chat template (built offline)
and a tiny random Llama over it (sal.models.tiny_llama, the builder every test uses)."""

from __future__ import annotations

import string

import pytest


def make_char_tokenizer():
    """A character-level PreTrainedTokenizerFast built offline (no hub), with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<eos>", "<|user|>", "<|assistant|>"]
    chars = list(string.printable) + list("→∧⏎“”…�")
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(chars)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                                  additional_special_tokens=["<|user|>", "<|assistant|>"])
    tok.chat_template = (
        "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


@pytest.fixture(scope="session")
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(char_tokenizer):
    # One intra-op thread: a model this small gains nothing from more, and on a busy shared
    # CPU the OpenMP hand-offs of two threads cost ~100x the compute.
    import torch

    from sal.models import tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # A character per token: the paper's prompts run to thousands of positions.
    yield tiny_llama(char_tokenizer, n_layers=2, d_model=32, max_position_embeddings=8192)
    torch.set_num_threads(threads)
