"""On-disk cache of judge answers: one JSON file per answer, named by a sha256 key.

Layout: <cache_dir>/<key[:2]>/<key>.json. Why one file per key rather than an append-only
JSONL or sqlite:
- Crash safety: a record is written to a unique temporary file in the same directory
  (sal.atomic), fsync'ed, then moved into place with os.replace, which is atomic on POSIX.
  A reader therefore sees either no file or a whole record, never a torn one. A kill leaves
  at most a hidden temporary file, which readers ignore; opening the cache recovers it
  (`recover()`): a complete record, whose answer was paid for and only its rename lost, is
  moved into place; an incomplete one is removed once it is old enough that no live
  writer can own it.
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
import re
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from sal.atomic import atomic_path, writer_is_dead

log = logging.getLogger(__name__)

RECORD_NAME = re.compile(r"^[0-9a-f]{64}\.json$")
# Temporary files of a record: sal.atomic's ".<key>.<random>.tmp.json" and, from older
# versions, ".<key[:16]>.<random>.tmp".
TMP_GLOBS = ("??/.*.tmp", "??/.*.tmp.json")
STALE_TMP_S = 60.0
"""An incomplete temporary file older than this belongs to a dead writer (a live one
writes a record in milliseconds)."""


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

    def __init__(self, root: str | os.PathLike, fsync: bool = True, recover: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        if recover:
            self.recover()

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
        data = json.dumps({**record, "key": key}, ensure_ascii=False).encode("utf-8")
        try:
            with atomic_path(path, fsync=self.fsync) as tmp:
                tmp.write_bytes(data)
        except FileNotFoundError:
            # Another process's recover() found our complete temporary file and moved it
            # into place first: the record is stored all the same.
            if not path.is_file():
                raise

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def _records(self):
        return (p for p in self.root.glob("??/*.json") if RECORD_NAME.match(p.name))

    def __len__(self) -> int:
        return sum(1 for _ in self._records())

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self._records())

    def _temporaries(self) -> list[Path]:
        return sorted({p for pattern in TMP_GLOBS for p in self.root.glob(pattern)})

    @staticmethod
    def _complete_record(tmp: Path) -> Optional[str]:
        """The key of the whole record `tmp` holds, or None when it is torn or foreign."""
        try:
            record = json.loads(tmp.read_bytes())
        except (OSError, ValueError):
            return None
        key = record.get("key") if isinstance(record, dict) else None
        if not (isinstance(key, str) and RECORD_NAME.match(f"{key}.json") and tmp.name.startswith(f".{key[:16]}")
                and tmp.parent.name == key[:2] and isinstance(record.get("text"), str)):
            return None
        return key

    def recover(self, stale_after_s: float = STALE_TMP_S) -> tuple[int, int]:
        """Finish what killed writers left; returns (records promoted, files removed).

        A temporary file holding a complete record (the write finished, the rename was lost)
        is moved into place, so its answer is not paid for again; one whose record already
        exists is removed. A torn one is removed when its writer (named in the temporary's
        name) is a dead process on this host, or once older than `stale_after_s` (younger,
        it may still be written by a live process on another host sharing the cache)."""
        promoted = removed = 0
        now = time.time()
        for tmp in self._temporaries():
            key = self._complete_record(tmp)
            try:
                if key is not None and not self.path(key).exists():
                    os.replace(tmp, self.path(key))
                    promoted += 1
                elif key is not None or writer_is_dead(tmp) or now - tmp.stat().st_mtime > stale_after_s:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:  # its writer (or another recover) got there first
                pass
        if promoted or removed:
            log.info("judge cache %s: recovered %d complete answer(s) left by a killed run, removed %d "
                     "temporary file(s)", self.root, promoted, removed)
        return promoted, removed

    def sweep(self) -> int:
        """Remove every temporary file, complete or not; returns how many. Call it only when
        no writer is running (a live writer's temp file would be removed); `recover()` is
        the safe version that keeps complete records."""
        removed = 0
        for tmp in self._temporaries():
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed
