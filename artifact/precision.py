"""Which visual graph to serve: `precision` = fp32 | fp16 | int8 | auto.

`auto` serves int8 on CPU when the artifact's manifest records that the int8 graph passed the
accuracy gate (`VariantAccuracy.gate`, measured by `ml2p eval --variants` on that very file),
and fp32 otherwise; the choice comes with the reason, for `/v1/models` and the start-up log.
An explicit variant the artifact lacks is refused with one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from artifact.errors import ArtifactError
from artifact.loader import Artifact

Precision = Literal["fp32", "fp16", "int8", "auto"]


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str
    served: str
    file: str
    reason: str

    def describe(self) -> dict:
        return {"requested": self.requested, "served": self.served, "file": self.file,
                "reason": self.reason}


def choose_precision(artifact: Artifact, requested: Precision, cpu: bool) -> PrecisionChoice:
    """The visual graph for `requested` (ArtifactError when an explicit variant is missing)."""
    variants = {name: spec for name, spec in (artifact.manifest.variants or {}).items()
                if (artifact.path / spec.file).is_file()}  # named and present
    fp32 = artifact.manifest.files.visual
    if requested == "fp32":
        return PrecisionChoice("fp32", "fp32", fp32, "requested")
    if requested != "auto":
        variant = variants.get(requested)
        if variant is None:
            have = ", ".join(["fp32", *sorted(v for v in variants if v != "fp32")])
            raise ArtifactError(artifact.path, f"precision {requested!r} requested but the "
                                               f"artifact has no {requested} graph (it has: "
                                               f"{have}); export it or choose another")
        return PrecisionChoice(requested, requested, variant.file, "requested")
    if not cpu:
        return PrecisionChoice("auto", "fp32", fp32, "auto serves int8 only on CPU engines")
    int8 = variants.get("int8")
    if int8 is None:
        return PrecisionChoice("auto", "fp32", fp32, "the artifact has no int8 graph")
    if int8.accuracy is None:
        return PrecisionChoice("auto", "fp32", fp32, "the int8 graph's accuracy was not "
                                                     "measured for this build")
    gate = int8.accuracy.gate
    if not gate.passed:
        return PrecisionChoice("auto", "fp32", fp32, "int8 did not pass the accuracy gate: "
                                                     + "; ".join(gate.failed))
    return PrecisionChoice("auto", "int8", int8.file, f"int8 passed the accuracy gate "
                                                      f"({gate.rule})")
