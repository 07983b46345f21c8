"""Input fingerprints: what a step's outputs depend on, recorded beside them.

A step (the crosscoder export, the feature explanations, the rule set's layer counts, the
rules, the judged sample, SAL) records, after its outputs, the settings it read and the
fingerprints of the artifacts it consumed. A rerun reuses the outputs only when the
fingerprint it computes from its own config equals the recorded one; otherwise it
recomputes and says in one log line which inputs changed. ``force=true`` recomputes anyway.

Written last, the fingerprint is also the step's "done" marker: outputs without one (a run
killed between writing them and recording it, or a run from before fingerprints) are
recomputed, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from sal import atomic

log = logging.getLogger("sal")

MAX_LISTED = 4
"""Changed inputs named in the log line (the rest are counted)."""


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists, paths strings), so that a fingerprint
    read back from disk compares equal to a freshly computed one."""
    return json.loads(json.dumps(value, default=str))


def settings(prefix: str, obj: Any, fields: Optional[Iterable[str]] = None,
             exclude: Iterable[str] = ()) -> dict[str, Any]:
    """{"prefix.field": value} for a config dataclass (or a mapping): the named ``fields``,
    or all fields but ``exclude``. Nested dataclasses stay one value."""
    values = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    names = list(fields) if fields is not None else [k for k in values if k not in set(exclude)]
    missing = [n for n in names if n not in values]
    if missing:
        raise KeyError(f"{prefix} has no field(s) {missing}")
    return {f"{prefix}.{n}": values[n] for n in names}


def digest(inputs: Mapping[str, Any]) -> str:
    text = json.dumps(_plain(dict(inputs)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a small file's bytes (an artifact whose producer records no fingerprint)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """'rules.tau: 0.0 -> 0.5; upstream explanations changed' for the inputs that differ."""
    parts = []
    for key in sorted(set(before) | set(now)):
        if key not in before:
            parts.append(f"{key} is new")
        elif key not in now:
            parts.append(f"{key} is gone")
        elif before[key] != now[key]:
            if key.startswith("upstream."):
                parts.append(f"{key} changed")
            else:
                parts.append(f"{key}: {before[key]!r} -> {now[key]!r}")
    if len(parts) > MAX_LISTED:
        parts = parts[:MAX_LISTED] + [f"and {len(parts) - MAX_LISTED} more"]
    return "; ".join(parts)


@dataclasses.dataclass
class Step:
    """One step of a stage: its done output, where its fingerprint lives, what it read."""

    name: str
    """What the step makes, in the paper's terms (used in log lines)."""
    output: Path
    """The output written last: its existence and a matching fingerprint mean done."""
    inputs: dict[str, Any]
    """Settings ("rules.tau") and upstream fingerprints ("upstream.explanations")."""
    fingerprint_path: Optional[Path] = None
    """Defaults to the output's name with the suffix ``.fingerprint.json``."""

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.inputs = _plain(dict(self.inputs))
        if self.fingerprint_path is None:
            self.fingerprint_path = self.output.with_name(self.output.stem + ".fingerprint.json")
        self.fingerprint_path = Path(self.fingerprint_path)

    @property
    def digest(self) -> str:
        return digest(self.inputs)

    def recorded(self) -> Optional[dict]:
        try:
            record = json.loads(self.fingerprint_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and "digest" in record else None

    def is_fresh(self, force: bool = False, quiet: bool = False) -> bool:
        """True when the outputs exist and were made from these inputs; otherwise False,
        after one log line saying why (unless ``quiet`` or the step never ran)."""
        say = (lambda *a: None) if quiet else log.warning
        if force:
            say("%s: recomputing (force=true)", self.name)
            return False
        if not self.output.exists():
            return False
        record = self.recorded()
        if record is None:
            say("%s: recomputing: %s has no fingerprint (a run interrupted before recording it, or from an "
                "older version)", self.name, self.output)
            return False
        if record["digest"] == self.digest:
            if not quiet:
                log.info("%s: up to date (%s)", self.name, self.output)
            return True
        say("%s: recomputing: %s", self.name,
            describe_changes(record.get("inputs", {}), self.inputs) or "the fingerprint's format changed")
        return False

    def record(self) -> None:
        """Record the fingerprint: call after every output of the step is written."""
        atomic.write_json(self.fingerprint_path, {"step": self.name, "digest": self.digest, "inputs": self.inputs})

    def forget(self) -> None:
        """Remove the record (outputs about to be rewritten are not done until recorded again)."""
        self.fingerprint_path.unlink(missing_ok=True)
