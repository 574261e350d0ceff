"""requirements/serving.lock against pyproject.toml, and .ci/lock.py (`make lock`)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import audit
import lock as lock_tool
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "serving.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_lock_pins_every_serving_dependency_within_its_range():
    pins = audit.read_lock(LOCK)  # every line an exact pin
    stale = []
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            stale.append(f"{req} (lock: {version})")
    assert not stale, f"requirements/serving.lock is stale, run `make lock`: {stale}"


def test_torch_and_the_project_are_not_in_the_serving_lock():
    pins = audit.read_lock(LOCK)
    assert "torch" not in pins and "ml2p-tagger" not in pins
    assert "make lock" in LOCK.read_text()


def test_lock_tool_walks_the_installed_closure():
    found = lock_tool.closure()
    for line in PYPROJECT["project"]["dependencies"]:
        name = canonicalize_name(Requirement(line).name)
        version, via = found[name]
        assert version == metadata.version(name) and "ml2p-tagger" in via
    assert "torch" not in found  # only in the train extra
    # transitive: fastapi -> starlette
    assert "fastapi" in found["starlette"][1]
    text = lock_tool.render(found)
    assert audit.read_lock_text(text) == {n: v for n, (v, _) in found.items()}
    assert "# via pyproject.toml" in text
