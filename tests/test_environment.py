"""The suite runs against the pinned environment: every package in constraints.txt is
installed at exactly its pinned version (`make install` installs from it; `make lock`
refreshes it)."""

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"


def pins() -> dict[str, str]:
    out = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt pins exact versions only: {line!r}"
            out[req.name] = spec.version
    return out


def test_every_pinned_package_is_installed_at_its_pinned_version():
    wrong = {}
    for name, pinned in pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        # torch's CPU wheel is 2.13.0+cpu: the pin names the release, any local build of it matches.
        if installed is None or Version(installed).public != Version(pinned).public:
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from constraints.txt (pinned, installed): {wrong}; run `make install`"


def test_the_lock_covers_the_declared_dependencies():
    import tomllib

    project = tomllib.loads((LOCK.parent / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    names = {re.sub(r"[-_.]+", "-", Requirement(d).name).lower() for d in declared}
    pinned = {re.sub(r"[-_.]+", "-", n).lower() for n in pins()}
    assert names <= pinned, f"declared but not pinned: {sorted(names - pinned)}; run `make lock`"
