"""Training on cached frozen-backbone features (`ml2p train`), or end to end.

With `finetune_backbone` the backbone trains too, on decoded images instead of the feature
cache (meant for GPU machines, `device="cuda"`; on 2 CPU cores a step costs ~50× more).

Several datasets train jointly over the union of their *seen* labels; a label that is unseen in
any evaluated dataset is removed from every training label set and from the distillation
targets, so zero-shot stays zero-shot across datasets. Labels of another dataset are "unknown"
(-1) for an image and never used as its negatives.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from artifact.imaging import load_and_preprocess
from models.baseline_losses import baseline_loss
from models.data import load_dataset
from models.features import FeatureCache, build_feature_cache
from models.label_embedders import create_embedder
from models.losses import distillation_loss, label_bce_loss, ml2p_loss
from models.metrics import evaluate_zsl_gzsl
from models.provenance import git_commit
from models.recipes import REGIMES
from models.tagger import Tagger, build_tagger, save_checkpoint
from models.vocab import imagenet_class_names, imagenet_exclusion_mask, unseen_labels

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that determines a training run (hashed for the checkpoint cache)."""

    model: dict = field(default_factory=lambda: dict(DEFAULT_MODEL))
    datasets: tuple[str, ...] = ("voc2007", "emojitags")
    eval_datasets: tuple[str, ...] = ("voc2007", "emojitags")
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    lam: float = 0.0  # weight of L_reg (method.md §2); 0.4 in the released hyper-parameters
    negatives: int = 0  # sampled negatives per image; 0 = every known negative
    # weight of a per-label cross-image BCE term beside ML2P's per-image ranking loss (0 =
    # the paper's loss); its bias is a training-only scalar, not part of the model
    label_bce_weight: float = 0.0
    distill_weight: float = 1.0
    distill_teacher_temperature: float = 1.0
    distill_student_scale: float = 20.0
    max_train_images: dict = field(default_factory=dict)  # per dataset cap (subsampling)
    # a head with ImageNet evidence: start its C→D map at the class names' label vectors (a
    # ConSE prior), excluded classes at zero so no unseen concept enters through it
    # ("class_names_all" keeps the excluded classes too: the information ConSE itself uses)
    evidence_init: str = "zeros"  # "zeros" | "class_names" | "class_names_all"
    # what the head may read besides the taps (method.md §3; `REGIMES`): "visual" (a), the
    # ImageNet evidence without the classes naming an unseen label ("imagenet-strict", b) or
    # with all 1000 ("imagenet-all", b). It sets the head's evidence input, `evidence_init` and
    # ConSE's classifier; "" leaves them to `model.head_kwargs` and `evidence_init`
    regime: str = ""
    # centre the label vectors by a fixed mean (the default); False keeps the embedder's raw
    # vectors (ConSE's other variant: its cosine over raw MiniLM vectors)
    label_centring: bool = True
    seed: int = 0
    finetune_backbone: bool = False  # end to end: the backbone trains on decoded images
    backbone_lr: float = 1e-4  # its learning rate (same warm-up and cosine schedule)
    device: str = "cpu"  # "cuda" on a GPU machine

    def to_json(self) -> dict:
        data = asdict(self)
        data["datasets"] = list(self.datasets)
        data["eval_datasets"] = list(self.eval_datasets)
        return data


DEFAULT_MODEL = {
    "name": "ml2p-lite0",
    "backbone": "efficientnet_lite0",
    "head": "ml2p",
    "head_kwargs": {"groups": 7, "widths": (64, 128, 256), "residual": False},
    "embedder": {"kind": "minilm"},
    "dim": 128,
    "label_projection": True,
}


# what a regime sets; a recipe that names a regime may not set these itself
_REGIME_KWARGS = ("imagenet_evidence_dim", "evidence_exclude", "source", "exclude_unseen",
                  "num_classes")


def regime_model(config: TrainConfig, seen_labels: int, excluded_classes: np.ndarray
                 ) -> tuple[dict, str]:
    """The model configuration and `evidence_init` that `config.regime` implies, for a model
    trained on `seen_labels` labels; `excluded_classes` [1000] bool: the ImageNet classes that
    name an unseen label (`imagenet_exclusion_mask`)."""
    model = copy.deepcopy(config.model)
    if not config.regime:
        return model, config.evidence_init
    if config.regime not in REGIMES:
        raise ValueError(f"unknown regime {config.regime!r}; one of {', '.join(REGIMES)}")
    kwargs = model.setdefault("head_kwargs", {})
    clash = sorted(set(_REGIME_KWARGS) & set(kwargs))
    if clash or config.evidence_init != "zeros":
        raise ValueError(f"regime {config.regime!r} sets the evidence input itself; remove "
                         f"{', '.join(clash) or 'evidence_init'} from the recipe")
    if config.regime == "visual" and config.distill_weight > 0:
        raise ValueError("regime 'visual' reads no ImageNet classifier, and the distillation "
                         "loss does: set distill_weight to 0")
    strict = config.regime == "imagenet-strict"
    if model["head"] == "conse":
        if config.regime == "visual":
            kwargs.update(source="seen", num_classes=seen_labels)
        else:
            kwargs["exclude_unseen"] = strict
        return model, "zeros"
    if config.regime == "visual":
        return model, "zeros"
    kwargs["imagenet_evidence_dim"] = 1000
    if strict:
        kwargs["evidence_exclude"] = [int(i) for i in np.flatnonzero(excluded_classes)]
    return model, "class_names" if strict else "class_names_all"


@dataclass
class SplitData:
    """Cached features of one split, restricted to its valid images, with targets."""

    name: str
    cache: FeatureCache
    rows: np.ndarray  # indices of valid images in the cache
    targets: np.ndarray  # [N, L] int8, 1/0/-1, in the split's own label order
    label_names: list[str]
    seen: np.ndarray  # [L] bool
    paths: list[Path] = field(default_factory=list)  # image file of each valid row


def load_split(dataset: str, split: str, backbone: str, limit: int | None = None,
               seed: int = 0) -> SplitData:
    data = load_dataset(dataset, split)
    cache = build_feature_cache(f"{dataset}-{split}", list(data.image_paths), backbone)
    rows = np.flatnonzero(cache.valid)
    if limit is not None and limit < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
    return SplitData(dataset, cache, rows, np.asarray(data.targets)[rows], list(data.label_names),
                     np.asarray(data.seen, dtype=bool), [Path(data.image_paths[r]) for r in rows])


def gather(split: SplitData, index: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    rows = split.rows[index]
    taps = tuple(torch.from_numpy(np.asarray(t[rows], dtype=np.float32)) for t in split.cache.taps)
    logits = torch.from_numpy(np.asarray(split.cache.logits[rows], dtype=np.float32))
    return taps, logits


def model_device(tagger: Tagger) -> torch.device:
    """Where the tagger's tensors live (CPU for a head without any, e.g. ConSE)."""
    for tensor in itertools.chain(tagger.parameters(), tagger.buffers()):
        return tensor.device
    return torch.device("cpu")


def backbone_inputs(tagger: Tagger, split: SplitData, index: np.ndarray,
                    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Taps and ImageNet logits of `split` rows `index`, on the tagger's device: from the
    cache, or — for a tagger with its own (fine-tuned) backbone, whose features the cache of
    the packaged one does not hold — by running that backbone on the decoded images."""
    device = model_device(tagger)
    if not tagger.backbone_finetuned:
        taps, logits = gather(split, index)
        return tuple(t.to(device) for t in taps), logits.to(device)
    if len(split.paths) != len(split.rows):
        raise ValueError(f"{split.name}: a fine-tuned backbone needs the image paths of the split")
    # decoding threads (PIL releases the GIL): on a GPU machine a sequential decode of the
    # batch would take longer than the training step itself
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 16)) as pool:
        images = np.stack(list(pool.map(load_and_preprocess,
                                        (str(split.paths[i]) for i in index))))  # [B, 3, H, W]
    *taps, logits = tagger.backbone.forward_all(torch.from_numpy(images).to(device))
    return tuple(taps), logits


@torch.no_grad()
def predict(tagger: Tagger, split: SplitData, label_vectors: torch.Tensor,
            batch_size: int = 128) -> np.ndarray:
    """Scores [N, L] of every valid image of `split` against transformed `label_vectors`."""
    tagger.eval()
    label_vectors = label_vectors.to(model_device(tagger))
    out = []
    for start in range(0, len(split.rows), batch_size):
        taps, logits = backbone_inputs(
            tagger, split, np.arange(start, min(start + batch_size, len(split.rows))))
        out.append(tagger.score(tagger.encode_from_taps(taps, logits), label_vectors).cpu()
                   .numpy())
    return np.concatenate(out)


class Trainer:
    """Joint multi-dataset trainer of a Tagger head on cached features."""

    def __init__(self, config: TrainConfig, out_dir: Path) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        backbone = config.model["backbone"]
        self.excluded = unseen_labels(config.eval_datasets)
        self.train_splits = [
            load_split(name, "train", backbone, config.max_train_images.get(name), config.seed)
            for name in config.datasets
        ]
        self.val_splits = [load_split(name, "val", backbone) for name in config.eval_datasets]
        # the joint training label space: seen labels of every training dataset, minus every
        # label that is unseen anywhere we evaluate
        names: list[str] = []
        for split in self.train_splits:
            for label, seen in zip(split.label_names, split.seen, strict=True):
                if seen and label not in self.excluded and label not in names:
                    names.append(label)
        self.label_names = names
        self.embedder = create_embedder(config.model["embedder"]["kind"])
        self.imagenet_names = imagenet_class_names()
        self.imagenet_keep = torch.from_numpy(~imagenet_exclusion_mask(self.excluded))
        raw_labels = self.embedder.embed(names)
        raw_imagenet = self.embedder.embed(self.imagenet_names)
        self.raw_labels = torch.from_numpy(raw_labels)
        self.raw_imagenet = torch.from_numpy(raw_imagenet)
        model_config, evidence_init = regime_model(config, len(names),
                                                   ~self.imagenet_keep.numpy())
        self.tagger = build_tagger(dict(model_config, embed_dim=int(raw_labels.shape[1])))
        # a fixed centring mean over a broad vocabulary: sentence-embedding vectors are
        # anisotropic, and ranking against raw vectors collapses to constant scores
        if config.label_centring:
            self.tagger.label_transform.fit_mean(np.concatenate([raw_labels, raw_imagenet]))
        if evidence_init != "zeros":
            self._init_evidence(keep_excluded=evidence_init == "class_names_all")
        if getattr(self.tagger.head, "source", None) == "seen":  # ConSE over the seen labels
            with torch.no_grad():
                self.tagger.head.set_class_vectors(self.tagger.transform_labels(self.raw_labels))
        if config.finetune_backbone:
            self.tagger.freeze_backbone = False
            self.tagger.attach_backbone()
            self.tagger.backbone_finetuned = True
        self.device = torch.device(config.device)
        self.tagger.to(self.device)
        self.raw_labels, self.raw_imagenet, self.imagenet_keep = (
            t.to(self.device) for t in (self.raw_labels, self.raw_imagenet, self.imagenet_keep))
        self.index = self._joint_index()
        # the label BCE's offset starts every label near "absent" (p ≈ 0.007 at score 0), as
        # nearly all are for an image
        self.bce_bias = torch.nn.Parameter(torch.full((), -5.0, device=self.device))

    def _init_evidence(self, keep_excluded: bool) -> None:
        evidence = getattr(self.tagger.head, "evidence", None)
        if evidence is None:
            raise ValueError("evidence_init='class_names' needs a head with an evidence input "
                             "(imagenet_evidence_dim > 0)")
        with torch.no_grad():
            vectors = self.tagger.transform_labels(self.raw_imagenet)  # [1000, D]
            if not keep_excluded:
                vectors[~self.imagenet_keep] = 0
            evidence.weight.copy_(vectors.T)

    def _joint_index(self) -> list[tuple[int, int]]:
        return [(s, i) for s, split in enumerate(self.train_splits) for i in range(len(split.rows))]

    def _joint_targets(self, split: SplitData, index: np.ndarray) -> torch.Tensor:
        """Targets of `split` rows in the joint label space; other datasets' labels unknown."""
        joint = np.full((len(index), len(self.label_names)), -1, dtype=np.int8)
        position = {name: i for i, name in enumerate(self.label_names)}
        for col, name in enumerate(split.label_names):
            if name in position:
                joint[:, position[name]] = split.targets[index, col]
        return torch.from_numpy(joint)

    def _batches(self, rng: np.random.Generator) -> list[list[tuple[int, int]]]:
        order = rng.permutation(len(self.index))
        size = self.config.batch_size
        return [[self.index[i] for i in order[s : s + size]] for s in range(0, len(order), size)]

    def _step_loss(self, batch: list[tuple[int, int]]) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        parts = []
        for s, split in enumerate(self.train_splits):
            index = np.array([i for bs, i in batch if bs == s], dtype=np.int64)
            if len(index):
                parts.append((split, index))
        taps_parts, logits_parts, targets_parts = [], [], []
        for split, index in parts:
            taps, logits = backbone_inputs(self.tagger, split, index)
            taps_parts.append(taps)
            logits_parts.append(logits)
            targets_parts.append(self._joint_targets(split, index).to(self.device))
        taps = tuple(torch.cat([t[k] for t in taps_parts]) for k in range(3))
        logits = torch.cat(logits_parts)
        targets = torch.cat(targets_parts)
        groups = self.tagger.encode_from_taps(taps, logits)  # [B, G, D]
        labels = self.tagger.transform_labels(self.raw_labels)  # [L, D]
        head = cfg.model["head"]
        if head == "ml2p":
            scores = self.tagger.score(groups, labels)  # [B, L]
            loss = ml2p_loss(scores, targets, groups, labels, cfg.lam, negatives=cfg.negatives)
            stats = {"rank": float(loss.detach())}
            if cfg.label_bce_weight > 0:
                bce = label_bce_loss(scores, targets, self.bce_bias)
                stats["bce"] = float(bce.detach())
                loss = loss + cfg.label_bce_weight * bce
        else:  # a baseline: its own loss (models/baseline_losses.py)
            loss, stats = baseline_loss(head, self.tagger.head, groups, labels, targets)
        if cfg.distill_weight > 0:
            imagenet = self.tagger.transform_labels(self.raw_imagenet)  # [1000, D]
            student = self.tagger.score(groups, imagenet) * cfg.distill_student_scale
            distill = distillation_loss(student, logits.detach(), cfg.distill_teacher_temperature,
                                        keep_mask=self.imagenet_keep)
            stats["distill"] = float(distill.detach())
            loss = loss + cfg.distill_weight * distill
        return loss, stats

    def validate(self) -> dict:
        results = {}
        for split in self.val_splits:
            vectors = self.tagger.transform_labels(
                torch.from_numpy(self.embedder.embed(split.label_names))).detach()
            scores = predict(self.tagger, split, vectors)
            metrics = evaluate_zsl_gzsl(scores, split.targets, split.label_names, split.seen,
                                        include="positive")
            results[split.name] = {
                setting: {k: round(float(metrics[setting][k]), 4) for k in ("map", "f1_3", "f1_5")}
                for setting in ("zsl", "gzsl")}
        self.tagger.train()
        return results

    def write_calibration_data(self, path: Path) -> None:
        """Validation scores + targets of every known (image, label) pair for `ml2p export`,
        with each pair's label (`label_index` into `labels`) and the labels trained on
        (`reference_labels`), from which the exporter measures each label's novelty.

        Only the datasets the model trained on: a domain it cannot rank (e.g. emoji scenes for
        a photo model) would pull every probability towards its own base rate.
        """
        scores, targets, index, labels = [], [], [], []
        for split in self.val_splits:
            if split.name not in self.config.datasets:
                continue
            vectors = self.tagger.transform_labels(
                torch.from_numpy(self.embedder.embed(split.label_names))).detach()
            split_scores = predict(self.tagger, split, vectors)
            known = split.targets >= 0
            columns = np.broadcast_to(np.arange(len(split.label_names)) + len(labels),
                                      known.shape)
            scores.append(split_scores[known].astype(np.float16))
            targets.append(split.targets[known].astype(np.int8))
            index.append(columns[known].astype(np.int32))
            labels += split.label_names
        self.tagger.train()
        np.savez_compressed(path, scores=np.concatenate(scores), targets=np.concatenate(targets),
                            label_index=np.concatenate(index), labels=np.array(labels),
                            reference_labels=np.array(self.label_names))

    def fit(self, resume: bool = True) -> dict:
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.tagger.parameters() if p.requires_grad]
        if cfg.label_bce_weight > 0:  # only then: train states of other runs still resume
            params.append(self.bce_bias)
        groups = [{"params": params, "lr": cfg.lr}]
        if cfg.finetune_backbone:  # a group of its own (only then: old train states resume)
            backbone = {id(p) for p in self.tagger.backbone.parameters()}
            groups = [{"params": [p for p in params if id(p) not in backbone], "lr": cfg.lr},
                      {"params": [p for p in params if id(p) in backbone],
                       "lr": cfg.backbone_lr}]
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(self.index) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs

        def schedule(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        history: list[dict] = []
        start_epoch = 0
        state_path = self.out_dir / "train_state.pt"
        if resume and state_path.exists():
            state = torch.load(state_path, weights_only=False)
            self.tagger.load_state_dict(state["tagger"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start_epoch = state["history"], state["epoch"]
            log.info("resumed from %s at epoch %d", state_path, start_epoch)
        rng = np.random.default_rng(cfg.seed + start_epoch)
        self.tagger.train()
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            sums: dict[str, float] = {}
            batches = self._batches(rng)
            for batch in tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                              mininterval=5):
                loss, stats = self._step_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                optimizer.step()
                scheduler.step()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
            record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 1),
                      **{k: v / len(batches) for k, v in sums.items()},
                      "val": self.validate()}
            history.append(record)
            log.info("epoch %d: %s", epoch + 1, json.dumps(record))
            torch.save({"tagger": self.tagger.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "history": history,
                        "epoch": epoch + 1}, state_path)
        (self.out_dir / "history.json").write_text(json.dumps(history, indent=1))
        provenance = {"train_config": cfg.to_json(), "git_commit": git_commit() or "unknown",
                      "train_labels": len(self.label_names),
                      "train_images": {s.name: len(s.rows) for s in self.train_splits},
                      "excluded_labels": sorted(self.excluded)}
        save_checkpoint(self.tagger, self.out_dir / "model.pt", history=history,
                        provenance=provenance)
        self.write_calibration_data(self.out_dir / "calibration.npz")
        return {"history": history, "checkpoint": str(self.out_dir / "model.pt")}


def write_checkpoint_calibration(checkpoint: Path, path: Path) -> Path:
    """`ml2p calibrate`: the calibration file of a trained checkpoint (its own training
    configuration rebuilds the validation splits and the labels it trained on), e.g. to refit
    the probabilities of a model trained before the file carried per-label data."""
    from models.tagger import load_checkpoint

    tagger = load_checkpoint(checkpoint)
    config = (tagger.provenance or {}).get("train_config")
    if config is None:
        raise ValueError(f"{checkpoint}: no training configuration in its provenance")
    trainer = Trainer(TrainConfig(**config), path.parent)
    trainer.tagger = tagger.to(trainer.device)
    trainer.write_calibration_data(path)
    return path


def train(config: TrainConfig, out_dir: Path, resume: bool = True) -> dict:
    return Trainer(config, out_dir).fit(resume=resume)
