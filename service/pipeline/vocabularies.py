"""Named label sets: built-ins (packaged in `artifact.vocabularies`) plus caller-defined ones
stored as JSON files in a directory.

A replica's vocabularies are its own; several replicas share them by mounting one directory
(each loads the files at start-up). Built-ins are read-only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from artifact.vocabularies import BUILTIN
from service.errors import Conflict, InvalidRequest, NotFound
from service.pipeline.labels import CleanLabels

log = logging.getLogger("ml2p.vocabularies")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


@dataclass
class Vocabulary:
    """A named label list; `embeddings` are filled on first use (per loaded model)."""

    name: str
    labels: list[str]
    builtin: bool = False
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    clean: CleanLabels | None = None  # validated/de-duplicated form, filled on first use
    embeddings: np.ndarray | None = None


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"vocabulary name {name[:80]!r} is invalid: 1-64 characters of letters, digits, "
            "'.', '_' and '-', starting with a letter or digit", field="name")
    return name


class VocabularyStore:
    """In-memory vocabularies backed by `<directory>/<name>.json` files."""

    def __init__(self, directory: Path, builtins: bool = True) -> None:
        self.directory = Path(directory)
        self._items: dict[str, Vocabulary] = {}
        self._builtins = builtins

    def load(self) -> None:
        """Read the built-ins and every stored vocabulary."""
        if self._builtins:
            for name, labels in BUILTIN.items():
                self._items[name] = Vocabulary(name, labels(), builtin=True, created="")
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                name = validate_name(data["name"])
                labels = [str(label) for label in data["labels"]]
            except (OSError, ValueError, KeyError, TypeError, InvalidRequest) as exc:
                log.warning("stored vocabulary %s skipped: %s", path, exc)
                continue
            if name in self._items:
                log.warning("stored vocabulary %s skipped: shadows a built-in", path)
                continue
            self._items[name] = Vocabulary(name, labels, created=data.get("created", ""))
        log.info("vocabularies loaded: %s", ", ".join(sorted(self._items)) or "none")

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Vocabulary:
        validate_name(name)
        try:
            return self._items[name]
        except KeyError:
            raise NotFound(f"no vocabulary named {name!r}", field="vocabulary") from None

    def put(self, name: str, labels: list[str]) -> tuple[Vocabulary, bool]:
        """Store (create or replace) a vocabulary; returns it and whether it is new."""
        validate_name(name)
        existing = self._items.get(name)
        if existing is not None and existing.builtin:
            raise Conflict(f"vocabulary {name!r} is built in and cannot be replaced")
        vocabulary = Vocabulary(name, list(labels))
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"name": name, "labels": vocabulary.labels, "created": vocabulary.created}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False)
        os.replace(tmp, self.directory / f"{name}.json")
        self._items[name] = vocabulary
        return vocabulary, existing is None

    def delete(self, name: str) -> None:
        vocabulary = self.get(name)
        if vocabulary.builtin:
            raise Conflict(f"vocabulary {name!r} is built in and cannot be deleted")
        (self.directory / f"{name}.json").unlink(missing_ok=True)
        del self._items[name]
