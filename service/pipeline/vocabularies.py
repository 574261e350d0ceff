"""Named label sets: built-ins (packaged in `artifact.vocabularies`) plus caller-defined ones
stored as JSON files in a directory that several replicas may share.

Sharing: every write is a temporary file renamed over `<name>.json` (readers see the old file
or the new one, never part of either), and every lookup first re-reads the directory when
`refresh_s` has passed since its last look, so a `PUT`, replacement or `DELETE` made through
one replica is seen by every other within `refresh_s` (plus the shared file system's own
attribute caching). Only files whose (inode, mtime, size) changed are read again. Built-ins are
read-only and the same in every replica (they ship with the code).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from artifact.vocabularies import BUILTIN
from service.errors import Conflict, InvalidRequest, NotFound
from service.pipeline.labels import CleanLabels

log = logging.getLogger("ml2p.vocabularies")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)

Signature = tuple[int, int, int]  # (inode, mtime ns, size): a renamed-in file has a new inode


@dataclass
class Vocabulary:
    """A named label list; `embeddings` are filled on first use (per loaded model).

    A replaced vocabulary is a new object, so work started for the old one (`pending`,
    `embeddings`) never answers for the new one.
    """

    name: str
    labels: list[str]
    builtin: bool = False
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    clean: CleanLabels | None = None  # validated/de-duplicated form, filled on first use
    embeddings: np.ndarray | None = None
    pending: Any = None  # the asyncio future embedding it, while one runs


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"vocabulary name {name[:80]!r} is invalid: 1-64 characters of letters, digits, "
            "'.', '_' and '-', starting with a letter or digit", field="name")
    return name


def _signature(stat: os.stat_result) -> Signature:
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class VocabularyStore:
    """Vocabularies in memory, kept in step with `<directory>/<name>.json` files."""

    def __init__(self, directory: Path, builtins: bool = True, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.refresh_s = refresh_s
        self._clock = clock
        self._builtin: dict[str, Vocabulary] = {}
        self._stored: dict[str, Vocabulary] = {}
        self._signatures: dict[str, Signature] = {}
        self._builtins = builtins
        self._checked_at: float | None = None

    def load(self) -> None:
        """Read the built-ins and every stored vocabulary."""
        if self._builtins:
            self._builtin = {name: Vocabulary(name, labels(), builtin=True, created="")
                             for name, labels in BUILTIN.items()}
        self.refresh(force=True)
        log.info("vocabularies loaded: %s", ", ".join(self.names()) or "none")

    def refresh(self, force: bool = False) -> None:
        """Re-read the directory if `refresh_s` has passed since the last look (or `force`)."""
        now = self._clock()
        if not force and self._checked_at is not None and now - self._checked_at < self.refresh_s:
            return
        self._checked_at = now
        try:
            entries = {entry.name[:-5]: _signature(entry.stat()) for entry in
                       os.scandir(self.directory)
                       if entry.name.endswith(".json") and not entry.name.startswith(".")}
        except FileNotFoundError:
            entries = {}
        for name in set(self._signatures) - set(entries):
            self._stored.pop(name, None)
            del self._signatures[name]
        for name, signature in entries.items():
            if self._signatures.get(name) != signature:
                self._read(name, signature)

    def _read(self, stem: str, signature: Signature) -> None:
        path = self.directory / f"{stem}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            name = validate_name(data["name"])
            labels = [str(label) for label in data["labels"]]
            if name != stem:
                raise ValueError(f"holds vocabulary {name!r}")
        except FileNotFoundError:
            return  # deleted since the directory was listed: the next look drops it
        except (OSError, ValueError, KeyError, TypeError, InvalidRequest) as exc:
            # a file written in place by hand may be half-written: keep what was there and
            # remember the signature, so it is read again only once it changes
            log.warning("stored vocabulary %s skipped: %s", path, exc)
            self._signatures[stem] = signature
            return
        self._signatures[name] = signature
        if name in self._builtin:
            log.warning("stored vocabulary %s skipped: shadows a built-in", path)
            return
        self._stored[name] = Vocabulary(name, labels, created=data.get("created", ""))

    def names(self) -> list[str]:
        self.refresh()
        return sorted({*self._builtin, *self._stored})

    def get(self, name: str) -> Vocabulary:
        validate_name(name)
        if name in self._builtin:
            return self._builtin[name]
        self.refresh()
        try:
            return self._stored[name]
        except KeyError:
            raise NotFound(f"no vocabulary named {name!r}", field="vocabulary") from None

    def put(self, name: str, labels: list[str]) -> tuple[Vocabulary, bool]:
        """Store (create or replace) a vocabulary; returns it and whether it is new."""
        validate_name(name)
        if name in self._builtin:
            raise Conflict(f"vocabulary {name!r} is built in and cannot be replaced")
        self.refresh(force=True)  # "new" means new to every replica, not just to this one
        existing = self._stored.get(name)
        vocabulary = Vocabulary(name, list(labels))
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"name": name, "labels": vocabulary.labels, "created": vocabulary.created}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, ensure_ascii=False)
                handle.flush()
                # the rename keeps the inode and mtime: this is the file's signature after it
                signature = _signature(os.fstat(handle.fileno()))
            os.replace(tmp, self.directory / f"{name}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stored[name] = vocabulary
        self._signatures[name] = signature
        return vocabulary, existing is None

    def delete(self, name: str) -> None:
        validate_name(name)
        if name in self._builtin:
            raise Conflict(f"vocabulary {name!r} is built in and cannot be deleted")
        self.refresh(force=True)
        self.get(name)
        (self.directory / f"{name}.json").unlink(missing_ok=True)
        del self._stored[name]
        self._signatures.pop(name, None)
