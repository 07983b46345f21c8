"""A tokenizer over a ten-token vocabulary, for span and explanation tests."""


class ListTokenizer:
    """Token id i decodes to VOCAB[i]; id 0 is a special token."""

    VOCAB = ["<s>", " a", " b", " =", " x", " 1", " 2", "\n", " y", " z"]
    all_special_ids = [0]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids if not (skip_special_tokens and i == 0))
