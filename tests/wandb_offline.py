"""W&B's offline runs read back without the network: the run's records from its
``run-<id>.wandb`` file, its tables from ``files/media/table/``.

wandb 0.31 no longer ships a Python reader for the ``.wandb`` file (its DataStore went with
the move to the Go core), so the file's framing is read here: a 7-byte header (":W&B",
magic 0xBEE1, version 0), then LevelDB-log records in 32 KiB blocks, each a 7-byte header
(crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; a block's tail
shorter than a header is padding. Each whole record is a ``wandb.proto`` Record."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B run file ({ident!r})"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zero fill: the rest of this block holds nothing
            pos += left
            continue
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@dataclass
class OfflineRun:
    dir: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    project: str = ""
    notes: str = ""
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def table(self, key: str) -> dict:
        """A logged wandb.Table: {"columns": [...], "data": [[...], ...]}."""
        entry = self.summary[key]
        assert entry["_type"] == "table-file", entry
        return json.loads((self.dir / "files" / entry["path"]).read_text())

    def image(self, key: str) -> Path:
        entry = self.summary[key]
        assert entry["_type"] == "image-file", entry
        return self.dir / "files" / entry["path"]


def _put(target: dict, item) -> None:
    keys = [item.key] if item.key else list(item.nested_key)
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_run(run_dir: Path) -> OfflineRun:
    """One ``offline-run-*`` folder."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun(Path(run_dir))
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.name, run.group, run.job_type, run.project, run.notes = (r.display_name, r.run_group, r.job_type,
                                                                         r.project, r.notes)
            for item in r.config.update:
                _put(run.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _put(run.config, item)
        elif kind == "summary":
            for item in rec.summary.update:
                _put(run.summary, item)
        elif kind == "history":
            step: dict = {}
            for item in rec.history.item:
                _put(step, item)
            run.history.append(step)
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under ``root`` (a run directory's ``wandb/`` folder, or above)."""
    return [read_run(d) for d in sorted(Path(root).rglob("offline-run-*")) if d.is_dir()]
