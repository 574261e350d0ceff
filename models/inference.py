"""Torch inference runners for a Tagger: the core of the `torch` runtime engine.

Imports only torch and numpy (plus `models`), so the GPU check can use it on a machine that has
torch but neither onnxruntime, tokenizers nor pydantic. `service/runtime/torch_engine.py` wraps
these in the service's Engine interface.

- `VisualRunner(tagger, device, fp16, cuda_graphs)`: float32 numpy [B,3,H,W] → float32 [B,G,D];
  `.explain(batch)` adds the relevance-map terms (`ML2PHead.relevance_terms`).
  fp16 runs the whole image side in half precision (outputs returned as float32). CUDA graphs
  capture one graph per batch size on first use (static input buffer, replayed afterwards).
- `TextRunner(tagger, embedder_module, device)`: int64 ids/mask [N,T] → float32 [N,D] (MiniLM,
  masked mean pool, L2-normalise, the model's label transform).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class VisualModule(nn.Module):
    """`image [N,3,H,W]` → `groups [N,G,D]`: backbone + head (what `visual.onnx` holds); with
    `explain`, → (`groups`, `positions [N,G,P,D]`, `evidence [N,G,D]`), the relevance-map
    terms (what `visual_explain.onnx` holds)."""

    def __init__(self, tagger: nn.Module, explain: bool = False) -> None:
        super().__init__()
        if tagger.backbone is None:
            tagger.attach_backbone()
        if explain and not tagger.explains:
            raise ValueError(f"the {tagger.config.get('head')!r} head has no relevance maps")
        self.tagger = tagger
        self.explain = explain

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.tagger.encode_images(image, explain=self.explain)


class TextModule(nn.Module):
    """`input_ids, attention_mask [N,T]` → `embedding [N,D]` (what `text.onnx` holds)."""

    def __init__(self, pooled_encoder: nn.Module, label_transform: nn.Module) -> None:
        super().__init__()
        self.encoder = pooled_encoder  # BERT + masked mean pool + L2-normalise → [N, E]
        self.label_transform = label_transform  # centre, normalise, project, normalise → [N, D]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.label_transform(self.encoder(input_ids, attention_mask))


class VisualRunner:
    def __init__(self, tagger: nn.Module, device: str | None = None, fp16: bool = False,
                 cuda_graphs: bool = False) -> None:
        self.device = pick_device(device)
        self.fp16 = bool(fp16)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.dtype = torch.float16 if self.fp16 else torch.float32
        self.module = VisualModule(tagger).eval().to(self.device, self.dtype)
        self._explainer = (VisualModule(tagger, explain=True).eval().to(self.device, self.dtype)
                           if tagger.explains else None)
        self._graphs: dict[tuple, tuple] = {}
        self._lock = threading.Lock()  # graph replay uses shared static buffers

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.cuda_graphs:
            with self._lock:
                return self._replay(x)
        x = x.to(self.device, non_blocking=True).to(self.dtype)
        return self.module(x).float().cpu().numpy()

    @torch.inference_mode()
    def explain(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 [B,3,H,W] → (groups [B,G,D], positions [B,G,P,D], evidence [B,G,D]), in
        the runner's precision (no CUDA graphs: maps are asked for now and then)."""
        if self._explainer is None:
            raise ValueError("this model's head has no relevance maps")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        outputs = self._explainer(x.to(self.device).to(self.dtype))
        return tuple(t.float().cpu().numpy() for t in outputs)

    def _replay(self, x: torch.Tensor) -> np.ndarray:
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = torch.zeros(key, device=self.device, dtype=self.dtype)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (allocations, cudnn choice)
                    self.module(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.module(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x.to(self.device, non_blocking=True).to(self.dtype))
        graph.replay()
        return static_out.float().cpu().numpy()

    def describe(self) -> dict:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"device": str(self.device), "device_name": name, "fp16": self.fp16,
                "cuda_graphs": self.cuda_graphs, "torch": torch.__version__}


class TextRunner:
    """Label side in fp32 (it is cached by the service; precision matters more than speed)."""

    def __init__(self, module: nn.Module, device: str | None = None) -> None:
        self.device = pick_device(device)
        self.module = module.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64)).to(self.device)
        mask = torch.from_numpy(np.asarray(attention_mask, dtype=np.int64)).to(self.device)
        return self.module(ids, mask).float().cpu().numpy()


def text_module_for(tagger: nn.Module, embedder=None) -> TextModule:  # noqa: ANN001
    """The label-side module of `tagger` (MiniLM from its package unless `embedder` given)."""
    if embedder is None:
        from models.label_embedders import embedder_from_config

        embedder = embedder_from_config(tagger.config["embedder"])
    if not hasattr(embedder, "torch_module"):
        raise ValueError(f"label embedder {embedder.kind!r} has no torch module to export/run "
                         "(only `minilm` does)")
    return TextModule(embedder.torch_module(), tagger.label_transform).eval()
