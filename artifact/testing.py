"""Test and benchmark helpers: a tiny, torch-free model artifact that satisfies the contract.

`write_tiny_artifact(dir)` builds `visual.onnx` (4x4 average pool + MatMul -> [N,G,D]),
`text.onnx` (token embedding, masked mean, L2 norm -> [N,D]), a small BERT-style WordPiece
`tokenizer.json`, a relevance-map graph `visual_explain.onnx` (unless `explain=False`) and a
consistent `manifest.json`. Needs the `onnx` package (tests only).
"""

from __future__ import annotations

import io
import socket
import string
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from artifact.imaging import Preprocessing

_WORDS = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow dining table dog horse motorbike "
    "person potted plant sheep sofa train tv monitor red green blue black white sky tree grass "
    "water sun beach road street house city animal dark bright photo of a the"
)
TOKENIZER_WORDS = _WORDS.split()


def _tokenizer(path: Path) -> int:
    """A BERT-like WordPiece tokenizer whose vocab spells any ASCII text; returns its size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    chars = string.ascii_lowercase + string.digits
    pieces += list(chars) + [f"##{c}" for c in chars] + list(string.punctuation)
    pieces += [w for w in dict.fromkeys(TOKENIZER_WORDS) if w not in pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=200))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(path))
    return len(vocab)


def _visual(path: Path, size: int, groups: int, dim: int, seed: int,
            explain: bool = False) -> None:
    """The tiny visual graph; with `explain`, its relevance-map twin: the same `groups`, and
    as `positions` each of the 4x4 cells' share of the projection (they sum, with the bias as
    `evidence`, to the value before the tanh: a stand-in with the real graph's outputs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    cell = size // 4
    weight = rng.standard_normal((48, groups * dim)).astype(np.float32) / 7.0
    bias = rng.standard_normal(groups * dim).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[cell, cell],
                         strides=[cell, cell]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["proj"]),
        helper.make_node("Add", ["proj", "bias"], ["biased"]),
        helper.make_node("Tanh", ["biased"], ["act"]),
        helper.make_node("Reshape", ["act", "shape"], ["groups"]),
    ]
    outputs = [helper.make_tensor_value_info("groups", TensorProto.FLOAT, ["N", groups, dim])]
    constants = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "bias"),
                 numpy_helper.from_array(np.array([-1, groups, dim], np.int64), "shape")]
    if explain:
        nodes += [
            helper.make_node("Reshape", ["pooled", "cells_shape"], ["cells"]),  # [N,3,16,1]
            helper.make_node("Mul", ["cells", "W_cells"], ["shares"]),  # [N,3,16,G·D]
            helper.make_node("ReduceSum", ["shares", "axis1"], ["per_cell"], keepdims=0),
            helper.make_node("Reshape", ["per_cell", "grid_shape"], ["grid"]),  # [N,16,G,D]
            helper.make_node("Transpose", ["grid"], ["positions"], perm=[0, 2, 1, 3]),
            helper.make_node("Mul", ["groups", "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "bias_groups"], ["evidence"]),
        ]
        outputs += [
            helper.make_tensor_value_info("positions", TensorProto.FLOAT,
                                          ["N", groups, 16, dim]),
            helper.make_tensor_value_info("evidence", TensorProto.FLOAT, ["N", groups, dim])]
        constants += [
            numpy_helper.from_array(np.array([-1, 3, 16, 1], np.int64), "cells_shape"),
            numpy_helper.from_array(weight.reshape(3, 16, groups * dim), "W_cells"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([-1, 16, groups, dim], np.int64), "grid_shape"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(bias.reshape(groups, dim), "bias_groups")]
    graph = helper.make_graph(
        nodes, "tiny_visual",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _text(path: Path, vocab_size: int, dim: int, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(seed).standard_normal((vocab_size, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),  # [N,T,D]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # [N,T,1]
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["mean"]),
        helper.make_node("ReduceL2", ["mean"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["norm1"]),
        helper.make_node("Div", ["mean", "norm1"], ["embedding"]),
    ]
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "T"])
            for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(
        nodes, "tiny_text", ints,
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1"),
         numpy_helper.from_array(np.array([2], np.int64), "axis2"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array(1e-6, np.float32), "eps")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_tiny_artifact(
    out: str | Path, *, size: int = 32, groups: int = 3, dim: int = 16, max_tokens: int = 16,
    seed: int = 0, explain: bool = True,
) -> Path:
    """Write a complete tiny artifact to `out` and return the directory (`explain=False`:
    without the relevance-map graph, as a model exported without maps)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _tokenizer(out / "tokenizer.json")
    _visual(out / "visual.onnx", size, groups, dim, seed)
    if explain:
        _visual(out / "visual_explain.onnx", size, groups, dim, seed, explain=True)
    _text(out / "text.onnx", vocab_size, dim, seed + 1)
    from artifact.manifest import Manifest, PreprocessingSpec

    manifest = {
        "name": "tiny-test",
        "version": "0.0.1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": "tiny-avgpool",
        "preprocessing": PreprocessingSpec.of(Preprocessing(size=size)),
        "groups": groups,
        "dim": dim,
        "label_embedder": {"kind": "wordpiece-mean", "model_id": "tiny", "max_tokens": max_tokens},
        "files": {"visual": "visual.onnx", "text": "text.onnx", "tokenizer": "tokenizer.json"},
        "gflops": {"image": round((3 * size * size + 2 * 48 * groups * dim) / 1e9, 9),
                   "label": round(2 * 8 * dim / 1e9, 9), "label_tokens": 8},
        "calibration": {"kind": "logistic", "a": 8.0, "b": -2.0},
        "accuracy": {},
        "provenance": {"generator": "artifact.testing.write_tiny_artifact", "seed": seed},
        "explain": {"files": {"fp32": "visual_explain.onnx"}, "rows": 4, "cols": 4,
                    "gflops_image": round((3 * size * size + 2 * 48 * groups * dim) / 1e9, 9),
                    "gflops_per_map": 2 * 16 * dim / 1e9,
                    "definition": "tiny stand-in: each cell's share of the projection"}
        if explain else None,
    }
    (out / "manifest.json").write_text(Manifest.model_validate(manifest).to_json())
    return out


def add_tiny_variant(artifact: str | Path, variant: str, *, gate_passed: bool | None,
                     seed: int = 7) -> Path:
    """Add a `variant` visual graph to a tiny artifact: the tiny visual graph with other
    weights (so answers show which graph served), and its manifest entry, with a measured
    accuracy whose gate passed or failed (`gate_passed`; None = accuracy not measured)."""
    import hashlib

    from artifact.manifest import Manifest

    artifact = Path(artifact)
    manifest = Manifest.model_validate_json((artifact / "manifest.json").read_text())
    name = f"visual.{variant}.onnx"
    _visual(artifact / name, manifest.preprocessing.size, manifest.groups, manifest.dim, seed)
    accuracy = None
    if gate_passed is not None:
        accuracy = {"dataset": "tiny", "images": 1, "zsl_map": 50.0, "gzsl_map": 50.0,
                    "zsl_change": 0.0 if gate_passed else -2.0, "gzsl_change": 0.0,
                    "zsl_change_ci95": [-0.1, 0.1], "gzsl_change_ci95": [-0.1, 0.1],
                    "top5_identical": 1.0,
                    "sha256": hashlib.sha256((artifact / name).read_bytes()).hexdigest(),
                    "gate": {"passed": gate_passed, "rule": "test rule",
                             "failed": [] if gate_passed else ["ZSL mAP change -2.00 points"]}}
    variants = dict(manifest.variants or {})
    variants[variant] = {"file": name, "precision": f"tiny {variant} stand-in",
                         "accuracy": accuracy}
    data = manifest.model_dump(mode="json", exclude_none=True) | {"variants": variants}
    (artifact / "manifest.json").write_text(Manifest.model_validate(data).to_json())
    return artifact / name


def image_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48),
                fmt: str = "PNG", mode: str = "RGB", **save: object) -> bytes:
    """An encoded image: solid colour with a contrasting square (so images differ)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle(
        (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2),
        fill=tuple(255 - c for c in color),
    )
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def free_port() -> int:
    """A TCP port free on loopback right now (for test and benchmark servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
