"""Runtime engines over a model artifact, chosen by the `engine` setting.

Entries are `module:Class` strings imported on demand, so `torch` is imported only when the
torch engine is selected.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from service.runtime.base import Engine, EngineUnavailable

if TYPE_CHECKING:
    from artifact.loader import Artifact
    from service.settings import Settings

ENGINES: dict[str, str] = {
    "onnxruntime-cpu": "service.runtime.onnxrt:OnnxRuntimeEngine",
    "onnxruntime-gpu": "service.runtime.onnxrt:OnnxRuntimeEngine",
    "torch": "service.runtime.torch_engine:TorchEngine",
}

__all__ = ["ENGINES", "Engine", "EngineUnavailable",
           "create_engine"]


def create_engine(settings: Settings, artifact: Artifact) -> Engine:
    """Instantiate the configured engine (sessions created, graphs checked, not warmed up)."""
    try:
        target = ENGINES[settings.engine]
    except KeyError:
        raise EngineUnavailable(
            f"unknown engine {settings.engine!r}; known: {sorted(ENGINES)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineUnavailable(
            f"engine {settings.engine!r} is not available here: {exc} "
            "(the torch engine needs the `train` extra)"
        ) from None
    return getattr(module, class_name)(artifact, settings)
