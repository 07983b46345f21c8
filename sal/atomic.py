"""Atomic artifacts: a file (or a directory) appears under its final name complete, or not at all.

Every stage treats an artifact's existence as "this is done" and later runs reuse it, so a
kill in the middle of a write must never leave a partial file under the final name. Each
helper writes to a temporary name in the same directory (same filesystem, so the rename is
atomic), flushes it to disk, then moves it into place with ``os.replace``; on an error the
temporary is removed. A kill -9 can leave a hidden ``.<name>.*.tmp<suffix>`` behind (which
no stage reads), never a partial artifact under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import psutil

from sal.faults import kill_point

TMP_MARK = ".tmp"
_WRITER = re.compile(r"\.w(?P<host>[A-Za-z0-9-]+)_(?P<pid>\d+)\.")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _writer_tag() -> str:
    """Host and process that own a temporary, in its name: a later process can then tell a
    temporary whose writer was killed from one a live writer is still filling."""
    return f"w{_host()}_{os.getpid()}"


def writer_is_dead(tmp: str | os.PathLike) -> bool:
    """True only when ``tmp`` was made by atomic_path on this host by a process that no
    longer exists; False when its writer lives, is on another host, or is unknown."""
    match = _WRITER.search(Path(tmp).name)
    return match is not None and match["host"] == _host() and not psutil.pid_exists(int(match["pid"]))


def _fsync_path(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_path(child)
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to (same directory, same suffix, so
    writers that infer the format from it work); moved onto ``path`` when the block ends.
    ``fsync=False`` skips flushing to disk (caches of many small files, where a lost entry
    is only recomputed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{_writer_tag()}.",
                                suffix=f"{TMP_MARK}{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            _fsync_path(tmp)
        kill_point("atomic.before_rename", path.name)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory that replaces the directory ``path`` when the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_MARK))
    try:
        yield tmp
        _fsync_path(tmp)
        kill_point("atomic.before_rename", path.name)
        old = None
        if path.exists():
            # Moved aside whole, not deleted in place: a kill during a slow delete must not
            # leave a half-deleted directory (config.json without its weights) under the name.
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.", suffix=TMP_MARK))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> Path:
    kwargs.setdefault("indent", 2)
    kwargs.setdefault("default", str)
    return write_text(path, json.dumps(obj, **kwargs) + "\n")


def write_parquet(df: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)
