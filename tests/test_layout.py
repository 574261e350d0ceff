"""The layout stays true (docs/architecture.md, "What may import what").

- `artifact` (the contract) imports none of the other packages, nor torch;
- `models` imports `artifact` only; `service` imports `artifact` only, and never torch or
  `models`, except the torch engine (`service/runtime/torch_engine.py`, imported lazily);
- `benchmarks` may import all three; the entry module `ml2p_cli` may import every package and
  no package imports it;
- no module loads another by file path, and `sys.path` is edited only by tests' conftest files
  and the GPU check's bundle loader.

Every import statement counts, including those inside functions (lazy imports are still
imports). Every module is also imported for real, so a broken import fails here.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("artifact", "models", "service", "benchmarks")
ENTRY = "ml2p_cli"
CLIENT = "ml2p_client"  # clients/python: the pip-installable client
# package -> the packages (ours, and torch) it must not import
FORBIDDEN = {
    "artifact": {"models", "service", "benchmarks", "torch", ENTRY, CLIENT},
    "models": {"service", "benchmarks", ENTRY, CLIENT},
    "service": {"models", "benchmarks", "torch", ENTRY},
    "benchmarks": {ENTRY},
    CLIENT: {"artifact", "models", "service", "benchmarks", "torch", ENTRY},
}
EXEMPT = {"service.runtime.torch_engine": {"models", "torch"}}  # the lazy torch engine
SYS_PATH_ALLOWED = {"benchmarks/gpu_check.py"}  # runs on a bare GPU machine from a bundle
# third-party packages some modules need that the test environment may lack
OPTIONAL = {"pytriton", "tensorrt"}


def modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of every module of the four packages and the entry module."""
    found = [(ENTRY, REPO / f"{ENTRY}.py")]
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "_generated" in path.parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def imported(path: Path, name: str) -> set[str]:
    """Top-level names of everything `path` imports (absolute and relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # a relative import never leaves the module's own top-level package
            out.add(node.module.split(".")[0] if not node.level else name.split(".")[0])
    return out


def violations(name: str, path: Path) -> list[str]:
    top = name.split(".")[0]
    if top == ENTRY:
        return []
    banned = FORBIDDEN[top] - EXEMPT.get(name, set())
    return sorted(f"{name} imports {target}" for target in imported(path, name) & banned)


def client_modules() -> list[tuple[str, Path]]:
    """The client package's modules (its generated stubs aside): it stands alone."""
    root = REPO / "clients" / "python"
    return [(".".join(p.relative_to(root).with_suffix("").parts), p)
            for p in sorted((root / CLIENT).rglob("*.py")) if "_generated" not in p.parts]


def test_import_directions() -> None:
    assert client_modules(), "clients/python/ml2p_client not found"
    found = [v for name, path in modules() + client_modules() for v in violations(name, path)]
    assert not found, "imports against docs/architecture.md:\n" + "\n".join(found)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rule itself: a lazy `models` import inside a service module is caught."""
    module = tmp_path / "probe.py"
    module.write_text("def handler():\n    from models.tagger import Tagger\n    return Tagger\n")
    assert violations("service.api.probe", module) == ["service.api.probe imports models"]
    module.write_text("from . import manifest\nimport torch.nn\n")
    assert violations("artifact.probe", module) == ["artifact.probe imports torch"]


@pytest.mark.parametrize("name", [name for name, _ in modules()])
def test_every_module_imports(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {exc.name}, not installed here")
        raise


def test_serving_never_loads_torch_or_models() -> None:
    """In a fresh interpreter: every `service` module but the torch engine, and the parts of
    `ml2p_cli` the server uses, leave torch and `models` unloaded."""
    names = [n for n, _ in modules() if n.startswith("service") and n not in EXEMPT]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in ('torch', 'models', 'benchmarks') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"serving loaded {done.stdout.strip()}"


def test_no_loading_by_file_path_and_no_sys_path_edits() -> None:
    sources = [p for _, p in modules()] + sorted((REPO / "tests").rglob("*.py"))
    found = []
    for path in sources:
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text(encoding="utf-8")
        if rel == "tests/test_layout.py":
            continue
        if "spec_from_file_location" in text:
            found.append(f"{rel} loads a module by file path")
        edits_path = "sys.path.insert" in text or "sys.path[" in text or "sys.path.append" in text
        if edits_path and not (path.name == "conftest.py" and rel.startswith("tests/")) \
                and rel not in SYS_PATH_ALLOWED:
            found.append(f"{rel} edits sys.path")
    assert not found, "\n".join(found)
