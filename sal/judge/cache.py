"""On-disk cache of judge answers: one JSON file per answer, named by a sha256 key.

Layout: <cache_dir>/<key[:2]>/<key>.json. Why one file per key rather than an append-only
JSONL or sqlite:
- Crash safety without a recovery step: a record is written to a unique temporary file in
  the same directory, fsync'ed, then moved into place with os.replace, which is atomic on
  POSIX. A reader therefore sees either no file or a whole record, never a torn one; a
  crash leaves at most a stray "*.tmp" file, which readers ignore and `sweep()` removes.
- Concurrent workers (several processes, DDP ranks, SLURM array jobs on a shared file
  system) need no lock: distinct keys touch distinct files, and two writers of the same
  key both write a complete record of the same question, the last rename winning. sqlite's
  WAL mode, by contrast, is unsafe on network file systems, which is where clusters keep
  run directories.
- Sharding by the first two hex digits keeps directories at ~1/256 of the entries.
The cost is one small file per judgment (a few hundred thousand at most for a paper-scale
run), which is fine for any file system.

The key covers everything that determines the answer: backend, model, sampling parameters,
the prompt, and the sample index (0 for the first answer, 1.. for the fresh answers asked
for when an answer cannot be parsed), so that a rerun with the same inputs replays the
same sequence of answers and sends zero requests. Records hold the raw answer text, never
a parsed label, so an improved parser applies to cached answers too. No secret is ever
part of a record or a key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)


def cache_key(backend: str, model: str, params: Mapping[str, Any], prompt: str, sample: int = 0) -> str:
    """sha256 hex digest of the canonical JSON of everything that determines an answer."""
    payload = json.dumps(
        {"backend": backend, "model": model, "params": dict(params), "prompt": prompt, "sample": sample},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Content-addressed store of raw judge answers (see module docstring)."""

    def __init__(self, root: str | os.PathLike, fsync: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are sha256 hex digests, got {key!r}")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict]:
        """The stored record, or None when absent. A record that cannot be read (which the
        atomic write should make impossible, short of disk corruption) is treated as absent
        and logged, so the question is simply asked again."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                record = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable judge cache record %s (%s)", path, err)
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            log.warning("ignoring judge cache record %s whose content does not match its name", path)
            return None
        return record

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Atomically store `record` (a JSON-serialisable mapping) under `key`."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({**record, "key": key}, ensure_ascii=False).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("??/*.json"))

    def sweep(self) -> int:
        """Remove temporary files left by writers that crashed; returns how many. Call it
        only when no writer is running (a live writer's temp file would be removed)."""
        removed = 0
        for tmp in self.root.glob("??/.*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed
