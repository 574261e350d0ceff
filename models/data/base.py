"""The multi-label dataset every loader returns, the dataset registry and path helpers.

A dataset is a list of image files plus an int8 target matrix ``[N, L]`` (1 positive,
0 negative, -1 unknown/ignored), the label texts and a ``seen`` mask over the labels.
Images are decoded and preprocessed by ``artifact.imaging`` (the one preprocessing shared
with serving). Unreadable images never crash: they are logged, counted and skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from artifact.imaging import ImageDecodeError, Preprocessing, decode_image, load_and_preprocess

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXTRA_SPLITS: dict[str, tuple[str, ...]] = {}  # dataset -> its own further splits
REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder is missing; the message names the path and what was expected."""


def cache_root() -> Path:
    """Where rebuildable artifacts live, outside the repository (env ``ML2P_CACHE_DIR``)."""
    return Path(os.environ.get("ML2P_CACHE_DIR", Path.home() / ".cache" / "ml2p"))


def resolve_root(root: str | Path | None, env: str, default: Path) -> Path:
    """Dataset root: the argument, else the environment variable `env`, else `default`."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return default


def require(path: Path, expected: str, hint: str = "") -> Path:
    """Return `path` if it exists, else raise naming the path and what should be there."""
    if not path.exists():
        message = f"dataset path {path} does not exist; expected {expected}"
        raise DatasetNotFoundError(message + (f" ({hint})" if hint else ""))
    return path


def check_split(split: str, dataset: str | None = None) -> str:
    known = SPLITS + EXTRA_SPLITS.get(dataset or "", ())
    if split not in known:
        raise ValueError(f"unknown split {split!r}{f' of {dataset}' if dataset else ''}; "
                         f"expected one of {', '.join(known)}")
    return split


class MultiLabelDataset(Dataset):
    """Images + multi-label targets + label names (see docs/contracts.md, "Datasets").

    `ids` are stable item ids (e.g. the VOC image id), used for split bookkeeping.
    `corrupt` collects indices of images that failed to decode; `skipped` counts them.
    """

    def __init__(
        self,
        name: str,
        split: str,
        image_paths: Sequence[Path],
        targets: np.ndarray,
        label_names: Sequence[str],
        seen: np.ndarray | Sequence[bool] | None = None,
        ids: Sequence[str] | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.image_paths = [Path(p) for p in image_paths]
        self.targets = np.asarray(targets, dtype=np.int8)
        self.label_names = list(label_names)
        n, labels = len(self.image_paths), len(self.label_names)
        if self.targets.shape != (n, labels):
            raise ValueError(f"{name}/{split}: targets have shape {self.targets.shape}, "
                             f"expected ({n}, {labels})")
        if not np.isin(self.targets, (-1, 0, 1)).all():
            raise ValueError(f"{name}/{split}: targets must be 1, 0 or -1")
        if len(set(self.label_names)) != labels:
            raise ValueError(f"{name}/{split}: duplicate label names")
        self.seen = (np.ones(labels, bool) if seen is None else np.asarray(seen, dtype=bool))
        if self.seen.shape != (labels,):
            raise ValueError(f"{name}/{split}: seen mask has shape {self.seen.shape}")
        self.ids = [p.stem for p in self.image_paths] if ids is None else list(ids)
        if len(self.ids) != n:
            raise ValueError(f"{name}/{split}: {len(self.ids)} ids for {n} images")
        self.preprocessing = preprocessing or Preprocessing()
        self.corrupt: set[int] = set()

    # -- basic access -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_paths)

    def __repr__(self) -> str:
        return (f"MultiLabelDataset({self.name}/{self.split}: {len(self)} images, "
                f"{len(self.label_names)} labels, {int(self.seen.sum())} seen)")

    @property
    def skipped(self) -> int:
        """How many images were found corrupt so far (by `load_image` or `valid_indices`)."""
        return len(self.corrupt)

    @property
    def seen_labels(self) -> list[str]:
        return [n for n, s in zip(self.label_names, self.seen, strict=True) if s]

    @property
    def unseen_labels(self) -> list[str]:
        return [n for n, s in zip(self.label_names, self.seen, strict=True) if not s]

    def _mark_corrupt(self, index: int, exc: Exception) -> None:
        if index not in self.corrupt:
            self.corrupt.add(index)
            log.warning("%s/%s: skipping unreadable image %s: %s (%d skipped so far)",
                        self.name, self.split, self.image_paths[index], exc, len(self.corrupt))

    def load_image(self, index: int) -> np.ndarray | None:
        """Preprocessed float32 [3,S,S], or None (warned and counted) if it can't be read."""
        try:
            return load_and_preprocess(str(self.image_paths[index]), self.preprocessing)
        except (ImageDecodeError, OSError) as exc:
            self._mark_corrupt(index, exc)
            return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image float32 [3,S,S], targets int8 [L]).

        An unreadable image is warned about and counted; it comes back as a zero image with
        an all-unknown (-1) target row, so it contributes nothing to a masked loss or metric
        and a DataLoader never crashes. Use `valid_indices()` / `drop_corrupt()` to skip
        such items up front.
        """
        image = self.load_image(index)
        row = self.targets[index]
        if image is None:
            size = self.preprocessing.size
            image = np.zeros((3, size, size), np.float32)
            row = np.full_like(row, -1)
        return torch.from_numpy(image), torch.from_numpy(np.array(row))

    # -- corrupt-image handling -------------------------------------------------------
    def valid_indices(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Indices whose image decodes (full decode, no resize); failures are counted."""
        keep = []
        for i in range(len(self)) if indices is None else indices:
            try:
                decode_image(self.image_paths[i].read_bytes(), target_size=self.preprocessing.size)
            except (ImageDecodeError, OSError) as exc:
                self._mark_corrupt(i, exc)
                continue
            keep.append(i)
        return np.asarray(keep, dtype=np.int64)

    def drop_corrupt(self) -> MultiLabelDataset:
        """A copy without the images that fail to decode (scans every image once)."""
        keep = self.valid_indices()
        if len(keep) < len(self):
            log.warning("%s/%s: dropped %d unreadable images of %d", self.name, self.split,
                        len(self) - len(keep), len(self))
        return self.subset(keep)

    # -- derived datasets --------------------------------------------------------------
    def subset(self, indices: Sequence[int] | np.ndarray) -> MultiLabelDataset:
        """The items at `indices` (in that order), same labels."""
        index = np.asarray(indices, dtype=np.int64)
        return MultiLabelDataset(
            self.name, self.split, [self.image_paths[i] for i in index], self.targets[index],
            self.label_names, self.seen, [self.ids[i] for i in index], self.preprocessing)

    def restrict(self, label_names: Sequence[str], seen: Sequence[bool] | None = None
                 ) -> MultiLabelDataset:
        """Re-express the targets over `label_names` (a joint label space).

        Columns this dataset has are copied; labels it does not know become -1 (unknown).
        `seen` defaults to this dataset's mask for known labels and True for new ones.
        """
        position = {n: i for i, n in enumerate(self.label_names)}
        targets = np.full((len(self), len(label_names)), -1, dtype=np.int8)
        mask = np.ones(len(label_names), bool)
        for col, label in enumerate(label_names):
            if label in position:
                targets[:, col] = self.targets[:, position[label]]
                mask[col] = self.seen[position[label]]
        return MultiLabelDataset(
            self.name, self.split, self.image_paths, targets, label_names,
            mask if seen is None else seen, self.ids, self.preprocessing)

    def seen_only(self) -> MultiLabelDataset:
        """Only the seen labels: what a zero-shot training run may look at."""
        return self.restrict(self.seen_labels)

    def summary(self) -> dict:
        positives = (self.targets == 1).sum(axis=0)
        return {"name": self.name, "split": self.split, "images": len(self),
                "labels": len(self.label_names), "seen": int(self.seen.sum()),
                "unseen": int((~self.seen).sum()),
                "positives_per_image": float((self.targets == 1).sum() / max(len(self), 1)),
                "labels_without_positive": int((positives == 0).sum())}


def subset_labels(datasets: Iterable[MultiLabelDataset], exclude: Iterable[str] = (),
                  seen_only: bool = True) -> list[str]:
    """Union of the datasets' (seen) labels in first-seen order, minus `exclude`.

    With `exclude` = every label unseen in any evaluated dataset this is the joint training
    label space; `dataset.restrict(names)` then maps each dataset onto it.
    """
    banned = set(exclude)
    names: list[str] = []
    for data in datasets:
        for label, seen in zip(data.label_names, data.seen, strict=True):
            if (seen or not seen_only) and label not in banned and label not in names:
                names.append(label)
    return names


def id_split(ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A fixed random `fraction` of the distinct `ids` (the carved-out validation ids)."""
    distinct = sorted(set(ids))
    rng = np.random.default_rng(seed)
    count = round(fraction * len(distinct))
    return {distinct[i] for i in rng.permutation(len(distinct))[:count]}


# -- registry --------------------------------------------------------------------------
Loader = Callable[..., MultiLabelDataset]
DATASETS: dict[str, Loader] = {}


def register(name: str, extra_splits: tuple[str, ...] = ()) -> Callable[[Loader], Loader]:
    """Decorator: make `loader(split, root=None, **kw)` available as `load_dataset(name, …)`,
    with the usual splits and `extra_splits` of its own."""
    def wrap(loader: Loader) -> Loader:
        DATASETS[name] = loader
        EXTRA_SPLITS[name] = tuple(extra_splits)
        return loader
    return wrap


def load_dataset(name: str, split: str, root: str | Path | None = None, **kw) -> MultiLabelDataset:
    """Load split `split` ("train", "val", "test", or one of the dataset's own, e.g.
    EmojiTags' "test-shift") of dataset `name`."""
    import models.data  # noqa: F401 - registers the built-in loaders

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](check_split(split, name), root=root, **kw)
