"""A builder of the activation cache killed mid-way (SIGKILL: no cleanup) leaves its lock and
its temporary directory: the next run on the host takes over at once instead of waiting for
the lock to go stale (15 minutes), and removes the dead builder's temporary."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sal.config.crosscoder import OptimConfig
from sal.training import cache as cache_mod

HERE = Path(__file__).resolve().parent
LAYERS = [0, 2]
OPTIM = dict(max_tokens_per_instance=48, docs_per_forward=4, cache_dtype="float32", cache_shard_tokens=200,
             batch_instances=1, tokens_per_instance=64, shuffle_buffer_tokens=256)

BUILD = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(HERE)!r})
    from _train_tiny import tiny_llama, tiny_texts
    from sal.config.crosscoder import OptimConfig
    from sal.training.cache import ensure_activation_cache
    model, tok = tiny_llama()
    ensure_activation_cache(sys.argv[1], model, tok, tiny_texts(24), {LAYERS!r}, OptimConfig(**{OPTIM!r}),
                            model_name="tiny")
""")


def test_a_killed_builders_lock_is_taken_over_at_once(tmp_path):
    from _train_tiny import tiny_llama, tiny_texts

    env = dict(os.environ, SAL_KILL_AT="cache.shard@shard_00001.safetensors")
    proc = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (lock,) = tmp_path.glob("*.lock")
    (stale,) = tmp_path.glob(".*.tmp-*")
    assert len(list(stale.glob("shard_*"))) == 2 and not list(tmp_path.glob("*/index.json"))

    model, tok = tiny_llama()
    start = time.monotonic()
    target = cache_mod.ensure_activation_cache(tmp_path, model, tok, tiny_texts(24), LAYERS, OptimConfig(**OPTIM),
                                               model_name="tiny", poll_s=0.05)
    assert time.monotonic() - start < 60  # not stale_after_s (900 s)
    assert (target / "index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # lock and dead temporary gone


def test_a_live_builders_lock_is_respected(tmp_path):
    lock = tmp_path / "key.lock"
    lock.write_text(f"{socket.gethostname()} {os.getppid()}")  # this host, a live process
    assert not cache_mod._owner_is_dead(lock)
    assert not cache_mod._try_lock(lock, stale_after_s=900) and lock.exists()
    lock.write_text(f"another-host.example {os.getppid()}")  # cannot tell: wait for staleness
    assert not cache_mod._owner_is_dead(lock)
