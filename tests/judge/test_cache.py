"""The on-disk cache: content-addressed, atomic, safe across processes."""

import json
import multiprocessing as mp
import os

import pytest

from sal.judge import JudgeCache, cache_key


def test_key_covers_every_input():
    base = dict(backend="openai", model="m", params={"temperature": 0.1, "top_p": 0.9}, prompt="p", sample=0)
    k = cache_key(**base)
    variants = [
        {**base, "backend": "hf_local"}, {**base, "model": "m2"}, {**base, "params": {"temperature": 0.2, "top_p": 0.9}},
        {**base, "prompt": "p "}, {**base, "sample": 1},
    ]
    keys = {cache_key(**v) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    assert cache_key(**{**base, "params": {"top_p": 0.9, "temperature": 0.1}}) == k  # order-independent
    assert len(k) == 64 and int(k, 16) >= 0


def test_roundtrip_and_ignores_debris(tmp_path):
    cache = JudgeCache(tmp_path)
    key = cache_key("b", "m", {}, "prompt")
    assert cache.get(key) is None and key not in cache
    cache.put(key, {"text": "answer ü"})
    assert cache.get(key)["text"] == "answer ü" and key in cache and len(cache) == 1
    # A torn write can only leave a temp file, which readers never see and sweep removes.
    (cache.path(key).parent / f".{key[:16]}.abc.tmp").write_text('{"text": "partial')
    assert cache.keys() == [key] and cache.sweep() == 1
    # A record whose content does not match its name (disk corruption) counts as absent.
    other = cache_key("b", "m", {}, "other")
    cache.path(other).parent.mkdir(exist_ok=True)
    cache.path(other).write_text(json.dumps({"key": key, "text": "x"}))
    assert cache.get(other) is None
    cache.path(other).write_text("{not json")
    assert cache.get(other) is None


def _writer(root: str, worker: int, n: int) -> None:
    cache = JudgeCache(root)
    for i in range(n):
        # every worker writes the shared keys and its own keys
        cache.put(cache_key("b", "m", {}, f"shared-{i}"), {"text": f"shared-{i}", "worker": worker})
        cache.put(cache_key("b", "m", {}, f"own-{worker}-{i}"), {"text": f"own-{worker}-{i}"})


def test_concurrent_processes(tmp_path):
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    cache = JudgeCache(tmp_path)
    assert len(cache) == 40 + 3 * 40
    for i in range(40):
        assert cache.get(cache_key("b", "m", {}, f"shared-{i}"))["text"] == f"shared-{i}"
    assert not list(tmp_path.glob("??/.*.tmp"))


def test_rejects_non_keys(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        JudgeCache(tmp_path).path("../../etc/passwd")


def test_a_kill_between_write_and_rename_loses_no_paid_answer(tmp_path):
    """What a kill leaves: a complete record in a temporary file (moved into place when the
    cache opens), a torn one (removed once no live writer can own it), and a temporary of a
    record that already exists (removed)."""
    cache = JudgeCache(tmp_path)
    done, torn, dup = (cache_key("b", "m", {}, p) for p in ("done", "torn", "dup"))
    cache.put(dup, {"text": "dup"})
    record = lambda key, text: json.dumps({"text": text, "key": key})  # noqa: E731
    for key, name, content in [(done, f".{done}.x1.tmp.json", record(done, "paid for")),
                               (torn, f".{torn}.x2.tmp.json", record(torn, "cut")[:15]),
                               (dup, f".{dup[:16]}.x3.tmp", record(dup, "dup"))]:  # older name pattern
        cache.path(key).parent.mkdir(exist_ok=True)
        (cache.path(key).parent / name).write_text(content)

    reopened = JudgeCache(tmp_path)  # a young torn file may belong to a live writer: kept
    assert reopened.get(done)["text"] == "paid for" and sorted(reopened.keys()) == sorted([done, dup])
    assert [p.name for p in reopened._temporaries()] == [f".{torn}.x2.tmp.json"]
    assert reopened.recover(stale_after_s=0) == (0, 1)
    assert not reopened._temporaries() and len(reopened) == 2


def _torn_write(root: str, key: str) -> None:
    """A writer killed half-way through a record: its temporary is named after this process."""
    from sal.atomic import atomic_path

    cache = JudgeCache(root)
    cache.path(key).parent.mkdir(parents=True, exist_ok=True)
    cm = atomic_path(cache.path(key), fsync=False)
    cm.__enter__().write_text('{"text": "cut sh')
    os._exit(0)  # no rename, no clean-up: what SIGKILL leaves


def test_a_torn_temporary_of_a_dead_writer_is_removed_at_once(tmp_path):
    key = cache_key("b", "m", {}, "torn by a kill")
    writer = mp.get_context("fork").Process(target=_torn_write, args=(str(tmp_path), key))
    writer.start()
    writer.join(30)
    (left,) = JudgeCache(tmp_path, recover=False)._temporaries()
    assert f"_{writer.pid}." in left.name  # the writer is named in the temporary
    reopened = JudgeCache(tmp_path)  # young, but its writer is gone: nothing can finish it
    assert not reopened._temporaries() and key not in reopened


def test_put_survives_another_process_recovering_its_temporary(tmp_path, monkeypatch):
    """A second process opening the cache may move our finished temporary into place before
    we rename it: the record is stored all the same."""
    cache = JudgeCache(tmp_path)
    key = cache_key("b", "m", {}, "race")
    real_replace = os.replace
    raced = []

    def racing_replace(src, dst):
        if not raced:  # the other process's recover() runs first, once
            raced.append(True)
            JudgeCache(tmp_path)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing_replace)  # os is one module: sal.atomic's too
    cache.put(key, {"text": "kept"})
    monkeypatch.undo()
    assert raced and JudgeCache(tmp_path).get(key)["text"] == "kept"
