"""The install: requirements.lock pins what pyproject.toml allows, and this environment is
the locked one (`make test` installs it), so a fresh machine runs the suite on the versions
it last passed with."""

from __future__ import annotations

import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, str]:
    pins = {}
    for number, line in enumerate(LOCK.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s;]*)", line)
        assert match, f"requirements.lock, line {number}: not name==version: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"requirements.lock, line {number}: {name} pinned twice"
        pins[name] = match[2]
    return pins


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    listed = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    return [r for r in map(Requirement, listed) if r.name != "kinject"]


def test_the_lock_pins_every_dependency_within_its_range():
    pins = locked()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's "
            f"'{requirement.specifier}'"
        )
        # a tested upper bound: pip install kinject gets no release the suite has not met
        assert any(s.operator in ("<", "<=", "==", "~=") for s in requirement.specifier), (
            f"{requirement.name} has no upper bound in pyproject.toml"
        )
    assert "kinject" not in pins
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--constraint $(LOCK)" in makefile and "grep -m1 '^torch==' $(LOCK)" in makefile


@pytest.mark.skipif(
    os.environ.get("KINJECT_LOCKING") == "1", reason="`make lock` tests the newest releases"
)
def test_this_environment_has_the_locked_versions():
    different = []
    for name, pinned in locked().items():
        try:
            installed = version(name).split("+")[0]  # torch's +cpu build is the same release
        except PackageNotFoundError:
            continue  # pinned for another platform or extra, not installed here
        if installed != pinned:
            different.append(f"{name} {installed} (locked: {pinned})")
    for requirement in requirements():
        version(requirement.name)  # every dependency is installed
    assert not different, (
        "installed versions differ from requirements.lock; `make test` installs the lock "
        "(touch requirements.lock to reinstall): " + ", ".join(different)
    )
