"""Value types shared by every judge backend: what is asked (JudgeItem), what comes back
(Judgment) and the run's tally (JudgeTally)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Optional

# The three questions the method asks a judge.
EXPLAIN = "explain"  # Figure 7: summarise a feature's top-15 spans -> <summary>
VERIFY = "verify"  # Figure 8: does the summary hold on the top-30 spans -> Final Decision
RULE = "rule"  # Figures 9/10: soundness of a Horn clause -> <judgement>
TASKS = (EXPLAIN, VERIFY, RULE)

# Judgment.status values. Only "ok" carries a label; every other status says why not.
OK = "ok"
FAILED = "failed"  # transport gave up (retries exhausted, 4xx) or replay had no answer
UNPARSEABLE = "unparseable"  # answers arrived but none could be parsed
DECLINED = "declined"  # the backend cannot answer this task (lexical on rules)
STATUSES = (OK, FAILED, UNPARSEABLE, DECLINED)


class Span(NamedTuple):
    """A window of text ending at (and including) the token where a feature activates."""

    text: str
    """The window decoded as one string (what the LLM judge reads)."""
    tokens: tuple[str, ...]
    """The window's tokens decoded one by one; the last one is the activating token."""
    activation: float
    doc: int = -1
    position: int = -1


@dataclass(frozen=True)
class JudgeItem:
    """One question for the judge. `prompt` is the filled paper prompt; the structured
    fields serve backends that do not read prompts (lexical, replay)."""

    key: str
    """Stable identity of the question, unique within a batch: "explain/<feature>",
    "verify/<feature>" or "rule/<p1>,<p2>,<q>" (p2 == -1 for one premise)."""
    task: str
    prompt: str
    spans: tuple[Span, ...] = ()
    summary: Optional[str] = None
    premises: tuple[str, ...] = ()
    conclusion: Optional[str] = None


class Judgment(NamedTuple):
    """The judge's answer to one item.

    label: summary kind ("exact"/"semantic"/"cannot_tell") for explain, decision
    ("Yes"/"Probably"/"Maybe"/"No") for verify, category ("Strict"/"Plausible"/"No") for
    rule; None unless status == "ok". text: the summary text (explain) or the rationale
    (rule)."""

    key: str
    task: str
    status: str
    label: Optional[str]
    text: Optional[str]
    raw: Optional[str]
    """Last raw answer received (parsed or not), for audit."""
    error: Optional[str]
    samples: int
    """Answers obtained for this item (1 + parse retries used); 0 if none arrived."""
    cached: bool
    """True when every answer used came from the cache (no request was sent)."""

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass
class JudgeTally:
    """Cumulative tally over a judge's lifetime (all batches)."""

    backend: str
    model: str
    n_items: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_unparseable: int = 0
    n_declined: int = 0
    n_cache_hits: int = 0
    """Answers served from the on-disk cache instead of a request."""
    n_shared: int = 0
    """Answers shared with an identical request already in flight (no request sent)."""
    n_requests: int = 0
    """Requests sent to the backend, retries included."""
    n_retries: int = 0
    n_parse_retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    n_missing_usage: int = 0
    """Successful responses whose body carried no `usage` (their tokens are not counted)."""
    cost_usd: float = 0.0
    """Estimated cost of the requests sent by this judge (cache hits cost nothing)."""
    problems: list = field(default_factory=list)
    """(key, status, error) for every item not labelled, in the order they finished."""

    def count(self, judgment: Judgment) -> None:
        self.n_items += 1
        attr = {OK: "n_ok", FAILED: "n_failed", UNPARSEABLE: "n_unparseable", DECLINED: "n_declined"}[judgment.status]
        setattr(self, attr, getattr(self, attr) + 1)
        if judgment.status != OK:
            self.problems.append((judgment.key, judgment.status, judgment.error))

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        line = (
            f"judge[{self.backend}:{self.model}] items={self.n_items} ok={self.n_ok} "
            f"failed={self.n_failed} unparseable={self.n_unparseable} declined={self.n_declined} "
            f"cache_hits={self.n_cache_hits} shared={self.n_shared} requests={self.n_requests} "
            f"retries={self.n_retries} "
            f"parse_retries={self.n_parse_retries} tokens={self.prompt_tokens}+{self.completion_tokens} "
            f"cost=${self.cost_usd:.4f}"
        )
        if self.n_missing_usage:
            line += f" (usage missing in {self.n_missing_usage} responses)"
        return line
