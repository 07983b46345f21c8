"""Log-likelihoods of answer strings after prompts, under a local causal LM.

What the hf_local judge spends its time on, done with as few token forwards as possible
(on a CPU every token of a forward costs, and a forward of a few tokens costs nearly as
much as one of a hundred):

- **The prompts' shared head is computed once.** Judge prompts share their template's long
  head (the paper's instructions come before the slots). The KV cache of the last head is
  kept, and a new head runs only from the first token where the two differ; the kept
  tensors are never written to (new caches start from views of them and grow by
  concatenation).
- **Several prompts in one forward.** A batch of prompts runs as one forward over their
  tails after the shared head. Tails are left-padded so that every row ends at the same
  position (only that position's logits are computed); pads are masked out and position
  ids continue from the head, so each row sees exactly its own prompt.
- **All answers in one forward.** The answer strings' tokens go side by side after each
  prompt, with a 4D attention mask in which each answer token sees its prompt and the
  earlier tokens of its own answer only, and position ids that count from the prompt's end
  (a token tree). Nothing is copied per answer.

All three are exact rewrites of "one full forward per (prompt, answer)"; the tests compare
them with that brute force. A model whose cache drops old tokens (sliding-window layers)
gets no head reuse, and its tree forward assumes a prompt fits its window.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import Tensor


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def tree_attention_mask(prompt_len: int, answer_lens: Sequence[int], dtype: torch.dtype,
                        prompt_keep_BP: Tensor | None = None) -> Tensor:
    """Additive mask [B, 1, Q, prompt_len + Q] for answers laid side by side after a prompt
    (Q = sum of answer_lens): token j of an answer sees the prompt and tokens 0..j of its own
    answer; everything else is masked. `prompt_keep_BP` (bool [B, prompt_len]) masks prompt
    positions per row (padding); without it B = 1 and every prompt position is seen."""
    q = sum(answer_lens)
    owner = torch.repeat_interleave(torch.arange(len(answer_lens)), torch.as_tensor(answer_lens, dtype=torch.long))
    tree_QQ = torch.ones(q, q, dtype=torch.bool).tril() & (owner[:, None] == owner[None, :])
    if prompt_keep_BP is None:
        prompt_keep_BP = torch.ones(1, prompt_len, dtype=torch.bool)
    b = prompt_keep_BP.shape[0]
    allowed = torch.cat([prompt_keep_BP[:, None, :].expand(b, q, prompt_len), tree_QQ.expand(b, q, q)], dim=2)
    mask = torch.zeros(b, q, prompt_len + q, dtype=dtype)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


class AnswerScorer:
    """Scores answer strings (token lists) after prompts (token lists) for one model.

    Not thread-safe: the judge calls it under its lock."""

    def __init__(self, model: Any):
        self.model = model
        params = inspect.signature(model.forward).parameters
        # transformers renamed `past_key_values` to `cache`; the old name warns and will go.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._ids: list[int] = []
        self._kv: list[tuple[Tensor, Tensor]] = []
        self._shareable = not any(getattr(self._cache(0, 1), "is_sliding", None) or [False])
        self.tokens_computed = 0
        """Token positions run through the model so far, pads included (head reuse shows here)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _cache(self, reuse: int, rows: int):
        """A fresh cache holding the first `reuse` kept positions, for `rows` rows."""
        from transformers import DynamicCache

        config = self.model.config
        if reuse == 0:
            return DynamicCache(config=config)
        kv = [(k[:, :, :reuse].expand(rows, -1, -1, -1), v[:, :, :reuse].expand(rows, -1, -1, -1))
              for k, v in self._kv]
        return DynamicCache(ddp_cache_data=kv, config=config)

    def _forward(self, ids_BS: Tensor, cache, last_only: bool = False, **kwargs) -> Tensor:
        """Log-probs [B, S or 1, V] after each position (only the last with last_only)."""
        self.tokens_computed += ids_BS.numel()
        if last_only and self._keep_kw:
            kwargs[self._keep_kw] = 1
        out = self.model(input_ids=ids_BS.to(self.device), use_cache=True, **{self._cache_kw: cache}, **kwargs)
        logits = out.logits[:, -1:] if last_only else out.logits
        return logits.float().log_softmax(-1)

    def _set_head(self, head: list[int]) -> None:
        """Make the kept KV hold exactly `head`, running only what it does not share."""
        reuse = common_prefix_len(self._ids, head)
        if reuse == len(head) == len(self._ids):
            return
        cache = self._cache(reuse, 1)
        if reuse < len(head):
            self._forward(torch.tensor([head[reuse:]]), cache, last_only=True)
        layers = getattr(cache, "layers", [])
        self._kv = [(layer.keys[:, :, :len(head)], layer.values[:, :, :len(head)]) for layer in layers]
        self._ids = list(head) if self._kv else []

    def _run_prompts(self, prompts: Sequence[Sequence[int]]) -> tuple[Tensor, Any, int, Tensor]:
        """One forward over the prompts' tails after their shared head. Returns the next-token
        log-probs [B, V], the cache, the head length P and keep_BK (bool [B, P + S]: which
        cached positions each row may see)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        prompts = [list(p) for p in prompts]
        head_len = min(len(p) for p in prompts) - 1  # every row keeps at least one token to run
        for p in prompts[1:]:
            head_len = min(head_len, common_prefix_len(prompts[0], p))
        head = prompts[0][:head_len] if self._shareable else []
        self._set_head(head)
        P = len(self._ids)
        tails = [p[P:] for p in prompts]
        S = max(len(t) for t in tails)
        ids_BS = torch.zeros(len(tails), S, dtype=torch.long)
        keep_BK = torch.zeros(len(tails), P + S, dtype=torch.bool)
        keep_BK[:, :P] = True
        pos_BS = torch.zeros(len(tails), S, dtype=torch.long)
        for i, t in enumerate(tails):  # left padding: every row's last token is at position S - 1
            ids_BS[i, S - len(t):] = torch.tensor(t)
            keep_BK[i, P + S - len(t):] = True
            pos_BS[i, S - len(t):] = torch.arange(P, P + len(t))
        cache = self._cache(P, len(tails))
        kwargs = dict(position_ids=pos_BS.to(self.device))
        if not bool(keep_BK.all()):
            kwargs["attention_mask"] = keep_BK.long().to(self.device)
        last_BV = self._forward(ids_BS, cache, last_only=True, **kwargs)[:, -1]
        return last_BV, cache, P, keep_BK

    def score(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> list[list[float]]:
        """Summed log-likelihood of every answer after every prompt, [len(prompts)][len(answers)],
        in two forwards (prompt tails, then the answer tree)."""
        if not answers or any(len(a) == 0 for a in answers):
            raise ValueError("every answer needs at least one token")
        last_BV, cache, _, keep_BK = self._run_prompts(prompts)
        B = last_BV.shape[0]
        first = torch.tensor([a[0] for a in answers], device=last_BV.device)
        scores_BA = last_BV[:, first].double()
        # An answer's last token is only scored, never fed: the tree holds a[:-1].
        fed = [list(a[:-1]) for a in answers]
        lens = [len(f) for f in fed]
        if sum(lens):
            positions_Q = torch.tensor([j for n in lens for j in range(n)])
            pos_BQ = keep_BK.sum(1)[:, None] + positions_Q[None, :]  # each row's prompt length onwards
            mask = tree_attention_mask(keep_BK.shape[1], lens, self.model.dtype, keep_BK).to(self.device)
            tree_BQ = torch.tensor([t for f in fed for t in f]).expand(B, -1)
            logprobs_BQV = self._forward(tree_BQ, cache, attention_mask=mask, position_ids=pos_BQ.to(self.device))
            row = 0
            for i, a in enumerate(answers):
                if len(a) > 1:
                    idx = torch.arange(row, row + len(a) - 1, device=logprobs_BQV.device)
                    tok = torch.tensor(a[1:], device=logprobs_BQV.device)
                    scores_BA[:, i] += logprobs_BQV[:, idx, tok].double().sum(1)
                row += lens[i]
        return scores_BA.tolist()

    def prompt(self, ids: Sequence[int]) -> tuple[Tensor, Any]:
        """Log-probs [V] of the next token after one prompt, and a cache holding it (for
        `extend`)."""
        last_BV, cache, _, _ = self._run_prompts([ids])
        return last_BV[0], cache

    def extend(self, ids: Sequence[int], cache) -> Tensor:
        """Feed `ids` after what a one-row `cache` holds (it grows); log-probs [V] after the last."""
        return self._forward(torch.tensor([list(ids)]), cache, last_only=True)[0, -1]
