"""The native kernel built with AddressSanitizer and UndefinedBehaviorSanitizer: any out-of-bounds
access, use of freed memory or signed overflow in _kernel.c aborts the run."""

import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

KERNEL_SOURCE = Path(__file__).resolve().parents[2] / "sal" / "rules" / "_kernel.c"


def _runtime(name: str) -> str | None:
    """Path of a sanitizer runtime library, or None where gcc does not ship it."""
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_kernel_is_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    runtimes = [_runtime("libasan.so"), _runtime("libubsan.so")]
    if None in runtimes:
        pytest.skip("gcc has no sanitizer runtimes here")
    target = tmp_path / f"_kernel{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    subprocess.run(
        ["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-shared", "-fPIC", "-std=c99", f"-I{sysconfig.get_paths()['include']}", str(KERNEL_SOURCE), "-o", str(target)],
        check=True,
    )
    env = {**os.environ, "LD_PRELOAD": " ".join(runtimes), "ASAN_OPTIONS": "detect_leaks=0",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("sanitized_kernel_script.py")), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("clean"), proc.stdout[-2000:] + proc.stderr[-4000:]
