"""Reliability tests: real `ml2p serve` processes under hostile input, overload, a soak and
SIGTERM under load (issue 6, "Reliability and security").

Servers come from the service tests' harness (tests/service/server_harness.py) and use the
tiny generated artifact (or `ML2P_TEST_MODEL`). Every module is marked `reliability`
(`pytest -m reliability` runs just these) and every test carries `pytest.mark.timeout`;
the defaults keep the whole directory to about two minutes on two shared cores. Longer runs:
`ML2P_SOAK_S` (soak seconds, default 20), `ML2P_FUZZ_EXAMPLES` (Hypothesis examples per
property, default 100), `ML2P_SCHEMA_EXAMPLES` (schemathesis fuzzing examples per operation,
default 25).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from artifact.testing import write_tiny_artifact  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact under test: `ML2P_TEST_MODEL` if set, else a tiny generated one."""
    given = os.environ.get("ML2P_TEST_MODEL")
    if given:
        return Path(given)
    return write_tiny_artifact(tmp_path_factory.mktemp("tiny-rel") / "artifact")
