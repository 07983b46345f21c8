"""Parsers for the judge's answers to Figures 7-10.

Judges (R1 above all) reason before answering and the reasoning often names every option
("maybe Strict... or No?") or even drafts a tag. So every parser
1. drops the reasoning: everything up to the last `</think>` (this also covers an answer
   whose opening `<think>` was pre-filled by the server and so never appears); an opening
   `<think>` that is never closed means the reply ended inside its reasoning (cut by the
   token limit): there is no answer, whatever tags the reasoning drafted;
2. removes markdown code fences;
3. takes the LAST answer in what remains,
and tolerates other capitalisation, single quotes, a missing brace or no braces at all,
and text around the answer. "Noise" (the paper's name for the third category in Section
2.4) is read as "No". A parser returns None when nothing can be parsed; callers must then
retry or record the item as unparseable, never pick a default.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple, Optional

from sal.config.choices import SOUNDNESS_CATEGORIES as CATEGORIES
from sal.config.choices import VERIFICATION_DECISIONS as DECISIONS
from sal.judge.types import EXPLAIN, RULE, VERIFY
SUMMARY_KINDS = ("exact", "semantic", "cannot_tell")

_THINK_END = re.compile(r"</\s*think\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*")
# A word that is an option of a template ("Yes/Probably/...") is not an answer.
_NOT_TEMPLATE = r"(?!\s*/)"


class Summary(NamedTuple):
    kind: str
    """"exact", "semantic" or "cannot_tell"."""
    text: str
    """The summary as written inside the tag, e.g. 'Exact pattern: "\\frac" in fractions'."""


class RuleVerdict(NamedTuple):
    """What a judge's `<judgement>` answer to a rule question (Figures 9/10) says; the
    item's full status record is sal.judge.types.Judgment."""

    category: str
    """"Strict", "Plausible" or "No"."""
    rationale: str
    """The "Relation/Intuition" string ("" when the answer gave none)."""


def strip_reasoning(text: str) -> str:
    """The answer part of a reply: after the last </think>, code fences removed; "" when
    a <think> is still open (the reply stopped inside its reasoning)."""
    ends = list(_THINK_END.finditer(text))
    if ends:
        text = text[ends[-1].end():]
    if _THINK_OPEN.search(text):
        return ""
    return _FENCE.sub("", text)


def _last_tag(text: str, names: str) -> Optional[str]:
    """Content of the last <name>...</name>; an unclosed last tag runs to the end."""
    opens = list(re.finditer(rf"<\s*(?:{names})\s*>", text, re.IGNORECASE))
    if not opens:
        return None
    rest = text[opens[-1].end():]
    close = re.search(rf"<\s*/\s*(?:{names})\s*>", rest, re.IGNORECASE)
    return rest[: close.start()] if close else rest


def parse_summary(text: Optional[str]) -> Optional[Summary]:
    """Figure 7's `<summary> ... </summary>` -> Summary(kind, text), or None.

    A summary without a recognised prefix is taken as "semantic" (judges often drop the
    "Semantic:" prefix); without any tag the last line starting with "Exact pattern:",
    "Semantic:" or "Cannot Tell" is used."""
    if not text:
        return None
    answer = strip_reasoning(text)
    content = _last_tag(answer, "summary")
    if content is None:
        starts = list(re.finditer(r"(?im)^[\s>*\-`\"']*(exact\s+pattern\s*:|semantic\s*:|cannot\s+tell)", answer))
        if not starts:
            return None
        content = answer[starts[-1].start(1):].split("\n", 1)[0]
    content = content.strip().strip("`*").strip()
    if not content:
        return None
    lowered = content.lower()
    prefix = re.match(r"(exact\s+pattern|semantic)\s*:\s*", lowered)
    if prefix and not content[prefix.end():].strip(" \"'`*."):
        return None  # a prefix with nothing after it summarises nothing
    if prefix and prefix.group(1).startswith("exact"):
        kind = "exact"
    elif prefix:
        kind = "semantic"
    elif re.match(r"cannot\s+tell\b", lowered):
        kind = "cannot_tell"
    elif content in ("summary here",):  # the template echoed back
        return None
    else:
        kind = "semantic"
    return Summary(kind, content)


_DECISION = re.compile(
    r"final\s*decision\s*\**\s*[:：]?\s*\**\s*[\[(]*\s*[\"']?(yes|probably|maybe|no)\b" + _NOT_TEMPLATE,
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"\[\[\s*(yes|probably|maybe|no)\s*\]\]", re.IGNORECASE)


def parse_decision(text: Optional[str]) -> Optional[str]:
    """Figure 8's `Final Decision: [[Yes/Probably/Maybe/No]]` -> "Yes"/"Probably"/"Maybe"/
    "No", or None. Falls back to the last `[[word]]` when "Final Decision" is missing."""
    if not text:
        return None
    answer = strip_reasoning(text)
    found = list(_DECISION.finditer(answer)) or list(_BRACKETED.finditer(answer))
    if not found:
        return None
    return found[-1].group(1).capitalize()


def normalise_category(value: object) -> Optional[str]:
    """"strict"/"Plausible"/"NO"/"Noise"/"No." -> "Strict"/"Plausible"/"No"; else None."""
    if not isinstance(value, str):
        return None
    word = value.strip().strip("\"'*.`").strip().lower()
    if word in ("strict", "plausible", "no"):
        return word.capitalize()
    if word == "noise":
        return "No"
    return None


_CATEGORY_RE = re.compile(
    r"[\"']?\s*category\s*[\"']?\s*[:=]\s*\**\s*[\"']?\s*(strict|plausible|noise|no)\b" + _NOT_TEMPLATE,
    re.IGNORECASE,
)
_RATIONALE_RE = re.compile(
    r"[\"']?\s*(?:relation\s*/\s*intuition|relation|intuition|rationale)\s*[\"']?\s*[:=]\s*"
    r"(?:\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'|([^,}\n]*))",
    re.IGNORECASE,
)


def _verdict_from_json(content: str) -> Optional[RuleVerdict]:
    body = content.strip().rstrip(".").strip()
    if not body.startswith("{"):
        body = "{" + body
    if not body.endswith("}"):
        body = body + "}"
    for candidate in (body, body.replace("'", '"')):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if not isinstance(obj, dict):
            continue
        fields = {str(k).strip().lower(): v for k, v in obj.items()}
        category = next((normalise_category(v) for k, v in fields.items() if "category" in k), None)
        if category is None:
            continue
        rationale = next(
            (v for k, v in fields.items() if any(w in k for w in ("relation", "intuition", "rationale"))), ""
        )
        return RuleVerdict(category, str(rationale).strip())
    return None


def _verdict_from_regex(content: str) -> Optional[RuleVerdict]:
    cats = list(_CATEGORY_RE.finditer(content))
    if not cats:
        return None
    last = cats[-1]
    category = normalise_category(last.group(1))
    rationale = ""
    rats = [m for m in _RATIONALE_RE.finditer(content)]
    # Prefer the rationale belonging to the last category (after it, else the closest before).
    after = [m for m in rats if m.start() > last.start()]
    chosen = after[0] if after else (rats[-1] if rats else None)
    if chosen is not None:
        raw = next(g for g in chosen.groups() if g is not None) if any(chosen.groups()) else ""
        rationale = raw.replace('\\"', '"').replace("\\'", "'").strip()
    return RuleVerdict(category, rationale)


def parse_rule_verdict(text: Optional[str]) -> Optional[RuleVerdict]:
    """Figures 9/10's `<judgement> "Category": ..., "Relation/Intuition": ... </judgement>`
    -> RuleVerdict(category, rationale), or None. The object may come with or without braces,
    with single quotes or a missing brace; without a tag the last "Category" in the answer
    is used."""
    if not text:
        return None
    answer = strip_reasoning(text)
    content = _last_tag(answer, "judgement|judgment")
    if content is not None:
        parsed = _verdict_from_json(content) or _verdict_from_regex(content)
        if parsed is not None:
            return parsed
    return _verdict_from_regex(answer)


def parse_answer(task: str, text: Optional[str]) -> Optional[tuple[str, Optional[str]]]:
    """(label, text) for a Judgment of the given task, or None when unparseable."""
    if task == EXPLAIN:
        summary = parse_summary(text)
        return None if summary is None else (summary.kind, summary.text)
    if task == VERIFY:
        decision = parse_decision(text)
        return None if decision is None else (decision, None)
    if task == RULE:
        verdict = parse_rule_verdict(text)
        return None if verdict is None else (verdict.category, verdict.rationale)
    raise ValueError(f"unknown judge task {task!r}")
