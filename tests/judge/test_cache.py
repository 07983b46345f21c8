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
