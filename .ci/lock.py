"""Write the serving lock: the runtime (base) dependencies of the project, fully pinned.

    python .ci/lock.py                  # print it
    python .ci/lock.py -o requirements/serving.lock   # what `make lock` does

The closure is walked from the installed distribution's own metadata (`Requires-Dist` of
ml2p-tagger, without extras, then recursively), so the pins are exactly the versions in the
environment that runs this script: install (`make install`), test, then lock. Markers are
evaluated for this interpreter; a dependency that applies only to another Python is not
listed (a constraints file that lacks a package leaves it unconstrained).

torch is not a serving dependency (it is the `train` extra, and the optional torch engine),
so it is not in the lock: it is pinned to the CPU build on local disk and installed from
the PyTorch index, not PyPI, and is not audited here.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "ml2p-tagger"
HEADER = """\
# Serving lock: the runtime dependencies of {project} (pyproject.toml [project] dependencies,
# no extras), every one pinned to the version installed when it was generated.
# Regenerate: `make lock` (python .ci/lock.py). Audited by `make audit` (.ci/audit.py).
# Used as a pip constraints file (`pip install -e . -c requirements/serving.lock`) by
# docker/Dockerfile. torch (train extra / optional engine) is not a serving dependency.
# Generated with Python {python} on {platform}.
"""


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def closure(project: str = PROJECT) -> dict[str, tuple[str, set[str]]]:
    """{canonical name: (installed version, {names of the packages that require it})}."""
    root = canonicalize_name(project)
    found: dict[str, tuple[str, set[str]]] = {}
    todo: list[tuple[str, frozenset[str], str]] = [(root, frozenset(), "")]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras, parent = todo.pop()
        dist = metadata.distribution(name)
        if name != root:
            version, via = found.setdefault(name, (dist.version, set()))
            via.add(parent)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in dist.requires or []:
            req = Requirement(line)
            if not _applies(req, extras):
                continue
            child = canonicalize_name(req.name)
            try:
                metadata.distribution(child)
            except metadata.PackageNotFoundError:
                raise SystemExit(f"{name} requires {req}, which is not installed: "
                                 "run `make install` first") from None
            todo.append((child, frozenset(req.extras), name))
    return found


def render(found: dict[str, tuple[str, set[str]]], project: str = PROJECT) -> str:
    out = [HEADER.format(project=project, python=".".join(map(str, sys.version_info[:2])),
                         platform=sys.platform)]
    root = canonicalize_name(project)
    for name in sorted(found):
        version, via = found[name]
        parents = ", ".join(sorted("pyproject.toml" if p == root else p for p in via))
        out.append(f"{name}=={version}\n    # via {parents}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = render(closure())
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
