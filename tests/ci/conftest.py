"""The CI scripts under `.ci/` are not a package (the folder name cannot be imported): their
folder goes on the path here, so the tests import them as `audit` and `lock`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".ci"))
