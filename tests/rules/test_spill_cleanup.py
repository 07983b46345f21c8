"""A counting process killed while it had partial tables spilled to disk leaves their folder
behind (a kill -9 runs no cleanup): the next spill on the host removes it, and only it."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from sal.rules.accumulate import SPILL_PREFIX, remove_dead_spills
from sal.rules.count import count_rules

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from sal.rules.count import count_rules
    a = np.random.default_rng(0).integers(0, 3, size=(40, 12))
    count_rules(a, chunk_samples=4, memory_budget_gb=1e-7, spill_dir=sys.argv[1], engine="numpy")
""")


def test_a_killed_counters_spill_folder_is_removed_by_the_next_spill(tmp_path):
    env = dict(os.environ, SAL_KILL_AT="count.spill:3")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (left,) = [p for p in tmp_path.iterdir()]
    assert left.name.startswith(SPILL_PREFIX) and len(list(left.iterdir())) >= 4  # the dead process's runs

    host = socket.gethostname()
    alive = tmp_path / f"{SPILL_PREFIX}{os.getpid()}-{host}-x"  # a live process's: kept
    elsewhere = tmp_path / f"{SPILL_PREFIX}1-other-host.example-x"  # another host's: kept
    alive.mkdir()
    elsewhere.mkdir()
    a = np.random.default_rng(0).integers(0, 3, size=(40, 12))
    got = count_rules(a, chunk_samples=4, memory_budget_gb=1e-7, spill_dir=str(tmp_path), engine="numpy")
    assert len(got) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])
    assert remove_dead_spills(str(tmp_path)) == 0
