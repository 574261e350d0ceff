"""ONNX Runtime engine: CPU provider by default; CUDA / TensorRT with `onnxruntime-gpu`.

The GPU path (`engine=onnxruntime-gpu`) cannot be exercised on the CPU-only machines here:
it only builds the provider list (TensorRT -> CUDA -> CPU fallback) and is otherwise the
same code as the CPU path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from artifact.errors import ArtifactError
from artifact.loader import (
    EXPLAIN_OUTPUTS,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    VISUAL_INPUT,
    VISUAL_OUTPUT,
    Artifact,
    Port,
    check_signature,
)
from artifact.precision import choose_precision
from service.runtime.base import MAX_LABEL_BATCH, Engine, EngineUnavailable

if TYPE_CHECKING:
    from service.settings import Settings

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
          "tensor(int32)": "int32"}


def trt_profiles(artifact: Artifact, settings: Settings, role: str) -> dict[str, str]:
    """TensorRT optimisation profiles: every batch the batcher can form (1 .. max batch) for
    the visual graph, 1 .. a label chunk x the token limit for the text graph."""
    if role in ("visual", "explain"):
        size = artifact.preprocessing.size
        shape = f"{VISUAL_INPUT}:{{}}x3x{size}x{size}"
        low, best, high = 1, settings.max_batch_size, settings.max_batch_size
        return {"trt_profile_min_shapes": shape.format(low),
                "trt_profile_opt_shapes": shape.format(best),
                "trt_profile_max_shapes": shape.format(high)}
    tokens = artifact.manifest.label_embedder.max_tokens

    def both(batch: int, length: int) -> str:
        return ",".join(f"{name}:{batch}x{length}" for name in TEXT_INPUTS)
    return {"trt_profile_min_shapes": both(1, 1), "trt_profile_opt_shapes": both(64, 16),
            "trt_profile_max_shapes": both(MAX_LABEL_BATCH, tokens)}


def providers_for(settings: Settings, profiles: dict[str, str] | None = None) -> list:
    """Execution providers for the configured engine, best first (`profiles`: TensorRT
    optimisation profiles of the graph the session runs)."""
    if settings.engine == "onnxruntime-cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise EngineUnavailable(
            f"engine {settings.engine!r} needs onnxruntime-gpu with CUDA "
            f"(this onnxruntime has {available}); use engine=onnxruntime-cpu"
        )
    device = {"device_id": settings.device_id}
    providers: list = []
    if "TensorrtExecutionProvider" in available:
        trt = {**device, "trt_fp16_enable": settings.fp16, **(profiles or {})}
        if settings.trt_cache_dir is not None:
            settings.trt_cache_dir.mkdir(parents=True, exist_ok=True)
            trt |= {"trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(settings.trt_cache_dir)}
        providers.append(("TensorrtExecutionProvider", trt))
    providers += [("CUDAExecutionProvider", device), "CPUExecutionProvider"]
    return providers


def _ports(args: list) -> dict[str, Port]:
    return {a.name: (tuple(a.shape), _TYPES.get(a.type, a.type)) for a in args}


class OnnxRuntimeEngine(Engine):
    """Two InferenceSessions (visual, text) sharing one set of session options."""

    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        super().__init__(artifact, settings)
        self.name = settings.engine
        options = ort.SessionOptions()
        options.graph_optimization_level = _LEVELS[settings.graph_optimization]
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.enable_cpu_mem_arena = settings.memory_arena
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if settings.intra_op_spinning else "0")
        self.precision = choose_precision(artifact, settings.precision,
                                          cpu=settings.engine == "onnxruntime-cpu")
        self.vectors_precision = self.precision.served
        self.visual = self._session(artifact, "visual", options,
                                    artifact.path / self.precision.file)
        self.text = self._session(artifact, "text", options)
        self.explain_missing = self._explain_missing()
        self.explainer = None if self.explain_missing else self._session(
            artifact, "explain", options,
            artifact.path / artifact.manifest.explain.files[self.precision.served])
        self._text_inputs = [i.name for i in self.text.get_inputs()]

    def _session(self, artifact: Artifact, role: str, options: ort.SessionOptions,
                 path: Path | None = None):
        path = path or artifact.file(role)  # type: ignore[arg-type]
        try:
            providers = providers_for(self.settings, trt_profiles(artifact, self.settings, role))
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several undocumented types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            raise ArtifactError(
                artifact.path, f"{path.name} cannot be loaded by ONNX Runtime: {first_line}"
            ) from None
        check_signature(artifact, role, _ports(session.get_inputs()),  # type: ignore[arg-type]
                        _ports(session.get_outputs()), path.name)
        return session

    def _explain_missing(self) -> str | None:
        """Why the served precision has no relevance-map graph (None: it has one)."""
        spec, served = self.artifact.manifest.explain, self.precision.served
        if spec is None:
            return (f"model {self.artifact.key} was exported without relevance maps (no "
                    f"visual_explain graph), so it cannot explain; re-export it with "
                    f"`ml2p export` for maps")
        if served not in spec.files:
            return (f"model {self.artifact.key} has no relevance-map graph for the {served} "
                    f"precision it serves (it has: {', '.join(sorted(spec.files))})")
        return None

    def encode_images_explained(self, batch: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.explainer is None:
            return super().encode_images_explained(batch)
        groups, positions, evidence = self.explainer.run(
            [VISUAL_OUTPUT, *EXPLAIN_OUTPUTS], {VISUAL_INPUT: batch})
        return groups, positions, evidence

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        return self.visual.run([VISUAL_OUTPUT], {VISUAL_INPUT: batch})[0]

    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = dict(zip(TEXT_INPUTS, (input_ids, attention_mask), strict=True))
        for name in self._text_inputs:  # e.g. token_type_ids in a plain BERT export
            feeds.setdefault(name, np.zeros_like(input_ids))
        return self.text.run([TEXT_OUTPUT], feeds)[0]

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "providers": self.visual.get_providers(),
            "onnxruntime": ort.__version__,
            "intra_op_threads": self.settings.intra_op_threads,
            "precision": self.precision.describe(),
            "graph_optimization": self.settings.graph_optimization,
        }
