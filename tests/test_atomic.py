"""Artifacts appear complete under their final name, or not at all (sal.atomic)."""

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from sal import atomic


def test_writers_produce_the_content_and_leave_no_temporary(tmp_path):
    atomic.write_text(tmp_path / "a" / "r.md", "# hello\n")
    atomic.write_json(tmp_path / "s.json", {"sal": 0.25, "path": tmp_path})
    df = pd.DataFrame({"p1": [1, 2], "prob": [0.5, 0.25]})
    atomic.write_parquet(df, tmp_path / "rules.parquet")
    assert (tmp_path / "a" / "r.md").read_text() == "# hello\n"
    assert json.loads((tmp_path / "s.json").read_text()) == {"sal": 0.25, "path": str(tmp_path)}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rules.parquet"), df)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "r.md", "rules.parquet", "s.json"]


def test_a_failed_write_keeps_the_old_artifact_and_removes_its_temporary(tmp_path):
    target = tmp_path / "sal.json"
    atomic.write_json(target, {"sal": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text('{"sal": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"sal": 1} and os.listdir(tmp_path) == ["sal.json"]


def test_the_temporary_keeps_the_suffix_writers_infer_formats_from(tmp_path):
    with atomic.atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".fig.")
        tmp.write_bytes(b"png")
    assert (tmp_path / "fig.png").read_bytes() == b"png"


def test_sigkill_mid_write_leaves_the_previous_file_and_a_hidden_temporary(tmp_path):
    target = tmp_path / "explanations.parquet"
    atomic.write_text(target, "complete")
    script = textwrap.dedent(f"""
        import os, signal
        from sal import atomic
        with atomic.atomic_path({str(target)!r}) as tmp:
            tmp.write_text("partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert target.read_text() == "complete"
    stale = [p for p in tmp_path.iterdir() if p != target]
    assert len(stale) == 1 and stale[0].read_text() == "partial" and stale[0].name.startswith(".")


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    export = tmp_path / "crosscoder"
    with atomic.atomic_dir(export) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"v1")
    with pytest.raises(OSError):
        with atomic.atomic_dir(export) as tmp:
            (tmp / "config.json").write_text('{"v": 2}')
            raise OSError("disk full")
    assert (export / "model.safetensors").read_bytes() == b"v1" and (export / "config.json").read_text() == "{}"
    with atomic.atomic_dir(export) as tmp:
        (tmp / "config.json").write_text('{"v": 3}')
    assert sorted(p.name for p in export.iterdir()) == ["config.json"]  # nothing of v1 left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crosscoder"]


def test_a_replaced_directory_is_moved_aside_whole_before_it_is_deleted(tmp_path, monkeypatch):
    """A kill while the old directory is being deleted (slow for a large export) must not leave
    a half-deleted directory (config.json without its weights) under the final name: the new
    one is in place before any of the old one is deleted."""
    export = tmp_path / "crosscoder"
    with atomic.atomic_dir(export) as tmp:
        (tmp / "config.json").write_text("v1")
        (tmp / "model.safetensors").write_bytes(b"v1")
    seen = []

    def rmtree_killed_midway(path, *a, **kw):  # what a kill during the delete would leave
        seen.append(sorted(p.name for p in export.iterdir()))
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree_killed_midway)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_dir(export) as tmp:
            (tmp / "config.json").write_text("v2")
            (tmp / "model.safetensors").write_bytes(b"v2")
    assert seen == [["config.json", "model.safetensors"]]
    assert (export / "config.json").read_text() == "v2" and (export / "model.safetensors").read_bytes() == b"v2"


def test_kill_point_sigkills_only_where_and_when_named(tmp_path):
    """sal.faults: SAL_KILL_AT=point[@tag][:N] kills at the N-th matching call, nowhere else."""
    from sal import faults

    assert faults.parse("a@t:2, b,c:3") == [("a", "t", 2), ("b", None, 1), ("c", None, 3)]
    script = textwrap.dedent("""
        import sys
        from sal.faults import kill_point
        for i in range(5):
            kill_point("other")
            kill_point("step", i % 2)
            print(i, flush=True)
    """)
    env = dict(os.environ, SAL_KILL_AT="step@1:2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -9 and proc.stdout.split() == ["0", "1", "2"]  # the 2nd call tagged 1 is i == 3
    env.pop("SAL_KILL_AT")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == ["0", "1", "2", "3", "4"]
