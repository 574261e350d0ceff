"""Tagger = backbone (by name, weights from its package) + head + label transform.

Built from a plain config dict, so a checkpoint is `{config, head, label_transform, history,
provenance}` and never carries backbone weights.

Config keys: `name`, `version`, `backbone`, `head`, `head_kwargs`, `embedder` ({"kind",
"model_id", ...}), `embed_dim` (E, raw label vectors), `dim` (D), `label_projection` (bool),
optional `input_size` (224).
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.heads import create_head, head_class
from models.labels import LabelTransform

# E of the embedders with a fixed dimension, used when a config leaves `embed_dim` out
KNOWN_EMBED_DIMS = {"minilm": 384}

DEFAULT_CONFIG: dict = {
    "name": "ml2p",
    "version": "0.1.0",
    "backbone": "efficientnet_lite0",
    "head": "ml2p",
    "head_kwargs": {},
    "embedder": {"kind": "minilm"},
    "dim": 300,
    "label_projection": True,
    "input_size": 224,
}


def normalize_config(config: dict) -> dict:
    """Defaults filled in, JSON-plain (tuples → lists) so it pickles safely and diffs cleanly."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg.update(copy.deepcopy(dict(config)))
    if "embed_dim" not in cfg:
        kind = cfg["embedder"].get("kind")
        if kind not in KNOWN_EMBED_DIMS:
            raise ValueError(f"config needs `embed_dim` for label embedder {kind!r}")
        cfg["embed_dim"] = KNOWN_EMBED_DIMS[kind]
    return json.loads(json.dumps(cfg))


def _head_kwargs(cfg: dict) -> dict:
    """head_kwargs plus `dim`, `backbone`, `input_size` where the head's constructor takes them."""
    kwargs = dict(cfg.get("head_kwargs", {}))
    params = inspect.signature(head_class(cfg["head"])).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in ("dim", "backbone", "input_size"):
        if key not in kwargs and (takes_all or key in params):
            kwargs[key] = cfg[key]
    return kwargs


class Tagger(nn.Module):
    """Image side `encode_images(x) -> [B, G, D]`, label side `transform_labels(raw) -> [N, D]`,
    and `score(image_out, labels) -> [B, L]`.

    The backbone is created lazily on the first `encode_images` (training on cached features
    never builds it) and stays frozen in eval mode unless `freeze_backbone=False`.
    """

    def __init__(self, config: dict, head: nn.Module, label_transform: LabelTransform,
                 backbone: nn.Module | None = None, freeze_backbone: bool = True) -> None:
        super().__init__()
        self.config = config
        self.head = head
        self.label_transform = label_transform
        self.freeze_backbone = freeze_backbone
        # True when the backbone's weights are this model's own (end-to-end training), not
        # the package's: they are saved with the checkpoint and the feature caches do not apply
        self.backbone_finetuned = False
        self.backbone: nn.Module | None = None
        if backbone is not None:
            self.attach_backbone(backbone)

    def attach_backbone(self, backbone: nn.Module | None = None) -> nn.Module:
        """Attach `backbone` (default: `create_backbone(config["backbone"])`, packaged weights)."""
        if backbone is None:
            from models.backbones import create_backbone

            backbone = create_backbone(self.config["backbone"])
        if self.freeze_backbone:
            backbone.eval().requires_grad_(False)
        self.backbone = backbone
        return backbone

    def train(self, mode: bool = True) -> Tagger:
        super().train(mode)
        if self.backbone is not None and self.freeze_backbone:
            self.backbone.eval()  # frozen BN statistics stay ImageNet's
        return self

    @property
    def uses_imagenet_logits(self) -> bool:
        return bool(getattr(self.head, "uses_imagenet_logits", False))

    def encode_from_taps(self, taps: tuple[torch.Tensor, ...],
                         imagenet_logits: torch.Tensor | None = None, explain: bool = False
                         ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if explain:  # the ML2P head's relevance-map terms (ML2PHead.relevance_terms)
            return self.head(tuple(taps), imagenet_logits, explain=True)
        return self.head(tuple(taps), imagenet_logits)  # [B, G, D]

    @property
    def explains(self) -> bool:
        """Whether the head computes relevance maps (`encode_images(x, explain=True)`)."""
        return hasattr(self.head, "relevance_terms")

    def encode_images(self, x: torch.Tensor, explain: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """[B, 3, H, W] preprocessed images → head output (ML2P: [B, G, D]); with `explain`,
        (S, positions, evidence) (`ML2PHead.relevance_terms`)."""
        backbone = self.backbone if self.backbone is not None else self.attach_backbone()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            if self.uses_imagenet_logits:
                t8, t16, t32, logits = backbone.forward_all(x)
            else:
                (t8, t16, t32), logits = backbone(x), None
        return self.encode_from_taps((t8, t16, t32), logits, explain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_images(x)

    def transform_labels(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw embedder vectors [N, E] → model label vectors [N, D], L2-normalised."""
        raw = torch.as_tensor(np.asarray(raw, dtype=np.float32)) if isinstance(raw, np.ndarray) \
            else raw
        return self.label_transform(raw)

    def score(self, image_out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.score(image_out, labels)  # [B, L]


def build_tagger(config: dict, backbone: nn.Module | None = None) -> Tagger:
    cfg = normalize_config(config)
    head = create_head(cfg["head"], **_head_kwargs(cfg))
    labels = LabelTransform(cfg["embed_dim"], cfg["dim"], projection=cfg["label_projection"])
    return Tagger(cfg, head, labels, backbone=backbone)


def _maybe_half(state: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
            for k, v in state.items()}


def save_checkpoint(tagger: Tagger, path: str | Path, history: list | dict | None = None,
                    provenance: dict | None = None, half: bool = False) -> Path:
    """Write `{config, head, label_transform, history, provenance}` (+ `backbone` when it was
    trained end to end); `half=True` stores floating tensors in fp16 (half the size; they
    load back into fp32 parameters)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "ml2p-tagger/1",
        "config": normalize_config(tagger.config),
        "head": _maybe_half(tagger.head.state_dict(), half),
        "label_transform": _maybe_half(tagger.label_transform.state_dict(), half),
        **({"backbone": _maybe_half(tagger.backbone.state_dict(), half)}
           if tagger.backbone_finetuned else {}),
        # JSON round trip: plain types only, so the file loads with weights_only=True
        "history": json.loads(json.dumps(history if history is not None else [], default=float)),
        "provenance": json.loads(json.dumps(provenance or {}, default=str)),
    }
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | Path, backbone: nn.Module | None = None) -> Tagger:
    """Rebuild the Tagger from its config and load head + label transform (strict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"config", "head", "label_transform"} - set(payload)
    if missing:
        raise ValueError(f"{path}: not a tagger checkpoint (missing {sorted(missing)})")
    tagger = build_tagger(payload["config"], backbone=backbone)
    tagger.head.load_state_dict(payload["head"])
    tagger.label_transform.load_state_dict(payload["label_transform"])
    if "backbone" in payload:  # end-to-end trained: its own backbone weights
        (tagger.backbone or tagger.attach_backbone()).load_state_dict(payload["backbone"])
        tagger.backbone_finetuned = True
    tagger.history = payload.get("history", [])
    tagger.provenance = payload.get("provenance", {})
    return tagger.eval()
