"""Torch engine: the artifact's own checkpoint (`tagger.pt`) run in PyTorch.

For GPU machines that have torch but not onnxruntime-gpu: CUDA when available (else CPU),
`fp16` setting (image side in half precision), optional CUDA graphs (`ML2P_TORCH_CUDA_GRAPHS=1`).
The one place `service` imports `models`; this module is imported only when `engine=torch` is
selected (see `service.runtime.ENGINES`), so serving images without torch never load it.

Same tokenizer and outputs as the onnxruntime engine: labels are tokenised by the artifact's
`tokenizer.json` (shared `LabelTokenizer`), then MiniLM + pooling + the label transform run in
torch fp32; images go through backbone + head.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from artifact.errors import ArtifactError
from service.runtime.base import Engine, EngineUnavailable

if TYPE_CHECKING:
    from artifact.loader import Artifact
    from service.settings import Settings

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise EngineUnavailable(f"the torch engine needs torch (the `train` extra): {exc}") from None


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, artifact: Artifact, settings: Settings, device: str | None = None,
                 cuda_graphs: bool | None = None) -> None:
        super().__init__(artifact, settings)
        from models.inference import TextRunner, VisualRunner, pick_device, text_module_for
        from models.tagger import load_checkpoint

        if settings.precision == "int8":
            raise EngineUnavailable("the torch engine runs the float checkpoint: precision "
                                    "int8 needs an onnxruntime engine")
        files = artifact.manifest.files
        ckpt = artifact.path / (files.checkpoint or "tagger.pt")
        if not ckpt.is_file():
            raise ArtifactError(artifact.path, f"{ckpt.name} (checkpoint, needed by the torch "
                                               "engine) is missing; re-export the artifact")
        self.device = pick_device(device or os.environ.get("ML2P_TORCH_DEVICE"))
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise EngineUnavailable("torch engine: CUDA requested but not available")
            self.device = torch.device("cuda", settings.device_id)
        if cuda_graphs is None:
            cuda_graphs = os.environ.get("ML2P_TORCH_CUDA_GRAPHS", "0") not in ("0", "", "false")
        if self.device.type == "cpu" and settings.intra_op_threads:
            torch.set_num_threads(settings.intra_op_threads)
        tagger = load_checkpoint(ckpt)
        m = artifact.manifest
        groups = getattr(tagger.head, "groups", m.groups)
        if int(tagger.config["dim"]) != m.dim or int(groups) != m.groups:
            raise ArtifactError(artifact.path, f"{ckpt.name} disagrees with manifest.json "
                                               f"(G/D {groups}/{tagger.config['dim']} vs "
                                               f"{m.groups}/{m.dim})")
        fp16 = (bool(settings.fp16) or settings.precision == "fp16") \
            and self.device.type == "cuda"  # CPU half is slow/partial
        self.visual = VisualRunner(tagger, str(self.device), fp16=fp16, cuda_graphs=cuda_graphs)
        self.vectors_precision = "fp16" if fp16 else "fp32"
        self.explain_missing = None if tagger.explains else (
            f"model {artifact.key}'s {tagger.config.get('head')!r} head computes no relevance "
            "maps")
        self.text = TextRunner(text_module_for(tagger), str(self.device))

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        return self.visual(batch)

    def encode_images_explained(self, batch: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.explain_missing is not None:
            return super().encode_images_explained(batch)
        return self.visual.explain(batch)

    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.text(input_ids, attention_mask)

    def describe(self) -> dict:
        return {"engine": self.name, **self.visual.describe()}

    def close(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

