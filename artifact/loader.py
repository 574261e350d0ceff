"""Loading an artifact directory and checking its graphs against the manifest.

An artifact directory holds `manifest.json`, `visual.onnx` (`image [N,3,H,W]` -> `groups
[N,G,D]`), `text.onnx` (`input_ids`, `attention_mask [N,T]` -> `embedding [N,D]`) and
`tokenizer.json` (docs/architecture.md). Anything missing, unreadable or disagreeing with the
manifest raises `ArtifactError` with one message naming the file and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from artifact.errors import ArtifactError
from artifact.imaging import Preprocessing
from artifact.manifest import Manifest

# Graph I/O names fixed by the artifact contract.
VISUAL_INPUT, VISUAL_OUTPUT = "image", "groups"
TEXT_INPUTS, TEXT_OUTPUT = ("input_ids", "attention_mask"), "embedding"
# the relevance-map graph (`visual_explain*.onnx`, optional): `image` -> `groups` plus these
EXPLAIN_OUTPUTS = ("positions", "evidence")  # [N,G,P,D], [N,G,D]


@dataclass(frozen=True)
class Artifact:
    """A loaded, file-checked artifact."""

    path: Path
    manifest: Manifest
    preprocessing: Preprocessing

    def file(self, role: Literal["visual", "text", "tokenizer"]) -> Path:
        return self.path / getattr(self.manifest.files, role)

    @property
    def key(self) -> str:
        """`name@version`, the label-cache namespace."""
        return f"{self.manifest.name}@{self.manifest.version}"


def load_artifact(path: str | Path) -> Artifact:
    """Read and check `manifest.json` and the presence of every file it names."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(path, "not a directory (set ML2P_MODEL or --model to an artifact)")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(path, "manifest.json is missing")
    try:
        manifest = Manifest.model_validate(json.loads(manifest_path.read_text()))
    except json.JSONDecodeError as exc:
        raise ArtifactError(path, f"manifest.json is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ArtifactError(path, f"manifest.json is invalid: {problems}") from None
    try:
        preprocessing = manifest.preprocessing.build()
    except ValueError as exc:
        raise ArtifactError(path, f"manifest.json preprocessing: {exc}") from None
    artifact = Artifact(path=path, manifest=manifest, preprocessing=preprocessing)
    for role in ("visual", "text", "tokenizer"):
        if not artifact.file(role).is_file():
            raise ArtifactError(path, f"{artifact.file(role).name} ({role}) is missing")
    for variant, name in (manifest.explain.files if manifest.explain else {}).items():
        if not (path / name).is_file():
            raise ArtifactError(path, f"{name} (relevance maps, {variant}) is missing")
    return artifact


# A graph port as the runtime reports it: shape with ints for static dims, None/str for
# dynamic ones, and an element type string such as "float32" / "int64".
Port = tuple[tuple[int | str | None, ...], str]


def check_signature(
    artifact: Artifact, role: Literal["visual", "text", "explain"],
    inputs: dict[str, Port], outputs: dict[str, Port], fname: str | None = None,
) -> None:
    """Raise ArtifactError when a graph's inputs/outputs disagree with the contract/manifest
    (`explain`: a relevance-map graph, the file `fname`)."""
    m = artifact.manifest
    size = artifact.preprocessing.size
    if role == "text":
        expect_in = {name: ((None, None), "int64") for name in TEXT_INPUTS}
        expect_out = {TEXT_OUTPUT: ((None, m.dim), "float32")}
    else:
        expect_in = {VISUAL_INPUT: ((None, 3, size, size), "float32")}
        expect_out = {VISUAL_OUTPUT: ((None, m.groups, m.dim), "float32")}
    if role == "explain" and m.explain is not None:
        grid = m.explain.rows * m.explain.cols
        positions, evidence = EXPLAIN_OUTPUTS
        expect_out |= {positions: ((None, m.groups, grid, m.dim), "float32"),
                       evidence: ((None, m.groups, m.dim), "float32")}
    fname = fname or artifact.file(role).name  # type: ignore[arg-type]
    for kind, expected, actual in (("input", expect_in, inputs), ("output", expect_out, outputs)):
        for name, (shape, dtype) in expected.items():
            if name not in actual:
                raise ArtifactError(
                    artifact.path,
                    f"{fname} has no {kind} {name!r} (it has {sorted(actual)}); "
                    f"the artifact contract requires {name!r}",
                )
            got_shape, got_dtype = actual[name]
            if got_dtype != dtype:
                raise ArtifactError(
                    artifact.path, f"{fname} {kind} {name!r} is {got_dtype}, expected {dtype}"
                )
            if len(got_shape) != len(shape):
                raise ArtifactError(
                    artifact.path,
                    f"{fname} {kind} {name!r} has rank {len(got_shape)}, expected {len(shape)}",
                )
            for axis, (want, got) in enumerate(zip(shape, got_shape, strict=True)):
                if want is not None and isinstance(got, int) and got != want:
                    raise ArtifactError(
                        artifact.path,
                        f"{fname} {kind} {name!r} axis {axis} is {got} but the manifest "
                        f"implies {want} (shape {list(got_shape)} vs {_fmt(shape)})",
                    )


def check_output(artifact: Artifact, role: Literal["visual", "text"], shape: tuple) -> None:
    """Check the concrete output shape of a warm-up run (catches dynamic-dim mismatches)."""
    m = artifact.manifest
    want = (m.groups, m.dim) if role == "visual" else (m.dim,)
    if tuple(shape[1:]) != want:
        raise ArtifactError(
            artifact.path,
            f"{artifact.file(role).name} produced shape {list(shape)}, the manifest implies "
            f"[N, {', '.join(map(str, want))}]",
        )


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
