"""Export a trained Tagger to the model artifact the service loads (see ../shared/ARCHITECTURE.md).

`export_artifact(checkpoint, out_dir)` writes:
- `visual.onnx`: `image` float32 [N,3,H,W] → `groups` float32 [N,G,D] (backbone + head), dynamic
  batch, opset 17, TorchScript exporter, then constant folding / dead-code removal by onnxscript's
  optimizer, checked with `onnx.checker` (full check);
- `text.onnx`: `input_ids`, `attention_mask` int64 [N,T] → `embedding` float32 [N,D]: MiniLM
  (token_type_ids = zeros inside the graph), masked mean pool, L2-normalise, the model's label
  transform (centring mean, projection to D, re-normalise); dynamic N and T;
- `tokenizer.json`: MiniLM's tokenizer with truncation and fixed padding removed (the service
  pads to the longest label and rejects labels over `label_embedder.max_tokens`);
- `tagger.pt`: the checkpoint itself (head + label transform, a few MB) for the torch engine;
- optional `visual.fp16.onnx` (fp16 weights and compute, float32 I/O) and `visual.int8.onnx`
  (static QDQ int8, calibrated on real images), each with top-5 agreement and speed;
- `visual_explain.onnx` (and its fp16 / int8 twins) when the head has relevance maps: `image` →
  `groups`, `positions` [N,G,P,D], `evidence` [N,G,D] (`ML2PHead.relevance_terms`), a second
  graph so that the default one stays byte-identical and pays nothing; the manifest's
  `explain` section names them;
- `manifest.json`, built through the schema `artifact.manifest.Manifest`; GFLOPs counted from
  the graphs by `models.flops.count_flops` (the convention of `artifact.gflops`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from artifact.gflops import CONVENTION as FLOPS_CONVENTION
from artifact.imaging import Preprocessing, load_and_preprocess
from artifact.loader import (
    EXPLAIN_OUTPUTS,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    VISUAL_INPUT,
    VISUAL_OUTPUT,
    load_artifact,
)
from artifact.manifest import (
    Calibration,
    ExplainSpec,
    GflopsSpec,
    Manifest,
    PreprocessingSpec,
    Variant,
    VariantAccuracy,
    VariantAgreement,
    label_novelty,
)
from artifact.tokenizer import LabelTokenizer
from artifact.vocabularies import read_json
from models.data import voc2007
from models.data.base import cache_root, resolve_root
from models.provenance import git_commit

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
OPSET = 17
EXPLAIN_FILE = "visual_explain.onnx"
EXPLAIN_DEFINITION = (
    "values[n] = the score grid position n would give the tag through the head's own path "
    "(its per-position features in place of the max-pooled ones, through the sigmoid, with "
    "the pooled pass's group-attention matrix, normalisation and best group held fixed), "
    "without the ImageNet-evidence term, which has no position and is `evidence`; so the "
    "pooled features' value + evidence = the score")
VARIANT_NOTES = {
    "fp32": "float32 (reference)",
    "fp16": "float16 weights and compute, float32 I/O",
}


# ------------------------------------------------------------------ loading


def load_tagger(checkpoint):  # noqa: ANN001, ANN201 - path or Tagger
    """A Tagger from a checkpoint path (or the Tagger itself), eval mode, backbone attached."""
    from models.tagger import Tagger, load_checkpoint

    tagger = checkpoint if isinstance(checkpoint, Tagger) else load_checkpoint(checkpoint)
    if tagger.backbone is None:
        tagger.attach_backbone()
    return tagger.eval()


# ------------------------------------------------------------------ graphs


def _optimize(model):  # noqa: ANN001, ANN202 - onnx.ModelProto
    """Constant folding + dead-code elimination (onnxscript optimizer), checked afterwards."""
    import onnx

    try:
        import onnxscript.optimizer

        folded = onnxscript.optimizer.optimize(model)
    except Exception as exc:  # noqa: BLE001 - the unoptimised graph is still correct
        log.warning("onnxscript optimizer failed (%s); keeping the exporter's folded graph", exc)
        folded = model
    onnx.checker.check_model(folded, full_check=True)
    return folded


def export_visual(tagger, path: str | Path, opset: int = OPSET,  # noqa: ANN001
                  explain: bool = False) -> Path:
    """Backbone + head → `visual.onnx` (`image` → `groups`), dynamic batch axis; with
    `explain`, the relevance-map graph (`image` → `groups`, `positions`, `evidence`)."""
    import onnx
    import torch

    from models.inference import VisualModule

    path = Path(path)
    size = int(tagger.config.get("input_size", 224))
    module = VisualModule(tagger, explain=explain).eval()
    example = torch.randn(2, 3, size, size)
    outputs = [VISUAL_OUTPUT, *(EXPLAIN_OUTPUTS if explain else ())]
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[VISUAL_INPUT], output_names=outputs,
                          dynamic_axes={name: {0: "N"} for name in [VISUAL_INPUT, *outputs]},
                          do_constant_folding=True)
    onnx.save(_optimize(onnx.load(str(path))), str(path))
    return path


def export_text(tagger, path: str | Path, embedder=None, opset: int = OPSET) -> Path:  # noqa: ANN001
    """MiniLM + pooling + label transform → `text.onnx`, dynamic batch and sequence axes."""
    import onnx
    import torch

    from models.inference import text_module_for

    path = Path(path)
    module = text_module_for(tagger, embedder)
    # two rows of unequal length so padding/masking is traced as in serving
    ids = torch.tensor([[101, 3899, 2795, 102], [101, 4937, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    with torch.no_grad():
        torch.onnx.export(module, (ids, mask), str(path), dynamo=False, opset_version=opset,
                          input_names=list(TEXT_INPUTS), output_names=[TEXT_OUTPUT],
                          dynamic_axes={**{name: {0: "N", 1: "T"} for name in TEXT_INPUTS},
                                        TEXT_OUTPUT: {0: "N"}},
                          do_constant_folding=True)
    onnx.save(_optimize(onnx.load(str(path))), str(path))
    return path


def write_tokenizer(src: str | Path, dst: str | Path) -> Path:
    """Copy tokenizer.json without truncation and with pad-to-longest padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src))
    tok.no_truncation()
    tok.no_padding()
    tok.save(str(dst))
    return Path(dst)


# ------------------------------------------------------------------ vocabulary helpers


def emojitags_labels() -> tuple[list[str], str]:
    """EmojiTags label names: the built dataset's labels.json when present, else the labels
    the committed split file names (its protected, forced-unseen and unseen keywords)."""
    import os

    built = Path(os.environ.get("ML2P_EMOJITAGS_ROOT", cache_root() / "emojitags")) / "labels.json"
    if built.exists():
        return list(json.loads(built.read_text())["label_names"]), "EmojiTags labels.json"
    split_file = ASSETS / "emojitags_split.json"
    if not split_file.exists():
        return [], "no EmojiTags labels"
    split = json.loads(split_file.read_text())
    names = sorted({*split.get("protected", []), *split.get("forced_unseen", []),
                    *split.get("unseen", [])})
    return names, "EmojiTags split file (labels.json not built)"


def vocabulary_texts() -> tuple[list[str], str]:
    """VOC label texts + EmojiTags labels, deduplicated in order; and where they came from."""
    voc = read_json("voc_classes.json")
    emoji, source = emojitags_labels()
    texts = list(dict.fromkeys([c["label"] for c in voc["classes"]] + emoji))
    return texts, f"VOC voc_classes.json + {source}"


def _tokenizer(tokenizer_path: str | Path) -> LabelTokenizer:
    """The serving tokenizer without its token limit (the exporter tokenises known labels)."""
    return LabelTokenizer(tokenizer_path, max_tokens=1 << 20)


def median_token_length(tokenizer_path: str | Path, texts: Sequence[str]) -> int:
    return int(round(statistics.median(_tokenizer(tokenizer_path).count(list(texts)))))


def tokenize(tokenizer_path: str | Path, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Serving-identical tokenisation: pad to the longest with [PAD], mask 1 on real tokens."""
    return _tokenizer(tokenizer_path)(list(texts))


def sample_images(n: int, split: str = "val", offset: int = 0, seed: int = 0) -> np.ndarray:
    """`n` real VOC images through artifact.imaging (random images if VOC is not present)."""
    root = resolve_root(None, voc2007.ENV_ROOT, voc2007.DEFAULT_ROOT) / "images" / split
    paths = sorted(root.glob("*.jpg"))[offset: offset + n] if root.is_dir() else []
    if len(paths) < n:
        log.warning("VOC images not found under %s; using random images", root)
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
    spec = Preprocessing()
    return np.stack([load_and_preprocess(str(p), spec) for p in paths])


# ------------------------------------------------------------------ calibration


def _fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[np.ndarray, float]:
    """Logistic regression p = sigmoid(x · w) by Newton's method; (w, mean NLL)."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    z = x @ w
    return w, float(np.mean(np.logaddexp(0, z) - y * z))


def fit_calibration(scores, targets, novelty=None, reference_labels=(),  # noqa: ANN001
                    iters: int = 100) -> dict:
    """Fit the score → probability calibration on validation (score, 0/1 target) pairs;
    targets < 0 (unknown) are dropped.

    Without `novelty`: one curve p = sigmoid(a·s + b). With `novelty` (each pair's label
    novelty u, broadcastable to `scores`): p = sigmoid(a·s + b + (c + d·s)·u), the one-curve
    fit kept as `score_only`. Returns the `Calibration` fields.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(targets, np.float64)
    u = (np.broadcast_to(np.asarray(novelty, np.float64), s.shape) if novelty is not None
         else np.zeros_like(s))
    keep = y >= 0
    s, y, u = s[keep], y[keep], u[keep]
    if s.size == 0 or y.min() == y.max():
        raise ValueError("calibration needs both positive and negative targets")
    ones = np.ones_like(s)
    (a, b), nll = _fit_logistic(np.stack([s, ones], 1), y, iters)
    fit = {"kind": "logistic", "a": float(a), "b": float(b), "n": int(s.size),
           "positives": int(y.sum()), "nll": nll}
    if novelty is None:
        return fit
    w, nll = _fit_logistic(np.stack([s, ones, u, u * s], 1), y, iters)
    return {**fit, "kind": "logistic-novelty", "a": float(w[0]), "b": float(w[1]),
            "c": float(w[2]), "d": float(w[3]), "nll": nll,
            "reference_labels": list(reference_labels),
            "score_only": {"a": fit["a"], "b": fit["b"], "nll": fit["nll"]}}


def calibration_fit(data, artifact: Path) -> dict:  # noqa: ANN001
    """The calibration of `data` (an .npz path, a mapping or a (scores, targets) pair).

    A trainer's file carries, per (image, label) pair, `scores`, `targets` and `label_index`
    into `labels`, and the `reference_labels` trained on: then each label's novelty comes from
    `artifact`'s own text graph, exactly as the server measures it. Without them (scores,
    targets) fit one curve.
    """
    if isinstance(data, str | Path):
        with np.load(data) as z:
            data = {k: z[k] for k in z.files}
    if not isinstance(data, Mapping):
        data = dict(zip(("scores", "targets"), data, strict=True))
    scores, targets = np.asarray(data["scores"]), np.asarray(data["targets"])
    if not {"labels", "label_index", "reference_labels"} <= set(data):
        return fit_calibration(scores, targets)
    labels = [str(t) for t in data["labels"]]
    reference = [str(t) for t in data["reference_labels"]]
    novelty = label_novelty(label_vectors(artifact, labels), label_vectors(artifact, reference))
    return fit_calibration(scores, targets, novelty=novelty[np.asarray(data["label_index"])],
                           reference_labels=reference)


# ------------------------------------------------------------------ variants


def make_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp16 weights and compute, float32 graph inputs/outputs (casts at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _toposort(model.graph)  # the converter appends its input casts at the end
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return Path(dst)


def _toposort(graph) -> None:  # noqa: ANN001 - onnx.GraphProto, sorted in place
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or a dangling input")
        for n in ready:
            produced.update(n.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def make_int8(src: Path, dst: Path, ranges_file: str | Path | None,
              calibration_images: np.ndarray | None) -> str:
    """The int8 graph from a committed `ml2p quantize` file, else (no file) min-max calibrated
    on `calibration_images` with the head kept in float32; returns its description."""
    from models.quantize import describe, quantize, quantize_from_file

    if ranges_file is not None:
        return describe(quantize_from_file(src, dst, Path(ranges_file)))
    quantize(src, dst, method="minmax", exclusion="head", images=calibration_images)
    return describe({"method": "minmax", "exclusion": "head",
                     "calibration": {"images": len(calibration_images), "split": "given"}})


def make_variant(variant: str, src: Path, dst: Path, int8_ranges: str | Path | None,
                 calibration_images: np.ndarray | None) -> str:
    """The `variant` (fp16, int8) of the fp32 graph `src` at `dst`; returns its description."""
    if variant == "fp16":
        make_fp16(src, dst)
        return VARIANT_NOTES["fp16"]
    if variant == "int8":
        return make_int8(src, dst, int8_ranges, calibration_images)
    raise ValueError(f"unknown variant {variant!r} (fp16, int8)")


def explain_file(variant: str = "fp32") -> str:
    """The relevance-map graph's file name for a precision variant."""
    return EXPLAIN_FILE if variant == "fp32" else f"visual_explain.{variant}.onnx"


def explain_spec(path: Path, size: int, dim: int) -> ExplainSpec:
    """The manifest's `explain` section for the fp32 relevance-map graph at `path` (its
    variants' files are added as they are built)."""
    import onnx

    from models.flops import count_flops

    graph = onnx.load(str(path))
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in graph.graph.output}
    positions = shapes[EXPLAIN_OUTPUTS[0]][2]
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"{path.name}: {positions} positions do not form a square grid")
    return ExplainSpec(
        files={"fp32": path.name}, rows=side, cols=side,
        gflops_image=count_flops(graph, {VISUAL_INPUT: (1, 3, size, size)}).gflops,
        gflops_per_map=2 * positions * dim / 1e9, definition=EXPLAIN_DEFINITION)


def session(path: str | Path, threads: int = 1):  # noqa: ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def label_vectors(artifact: Path, labels: Sequence[str]) -> np.ndarray:
    """`labels` through an artifact's tokenizer and text graph: float32 [L, D]."""
    ids, mask = tokenize(artifact / "tokenizer.json", list(labels))
    return session(artifact / "text.onnx").run(
        None, dict(zip(TEXT_INPUTS, (ids, mask), strict=True)))[0]


def graph_scores(graph: Path, images: Sequence[np.ndarray] | np.ndarray, labels: np.ndarray,
                 threads: int = 2, batch: int = 32) -> np.ndarray:
    """score[n, l] of `images` (preprocessed, [3,H,W] each) run through the visual `graph`
    in batches of `batch`."""
    sess = session(graph, threads)
    return np.concatenate([
        scores_of(sess.run(None, {VISUAL_INPUT: np.stack(images[i:i + batch])})[0], labels)
        for i in range(0, len(images), batch)])


def scores_of(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """score[b, l] = max_g ⟨groups[b, g], labels[l]⟩."""
    return np.einsum("bgd,ld->bgl", groups, labels).max(1)


def top5_agreement(a: np.ndarray, b: np.ndarray, k: int = 5) -> dict:
    """Share of images whose top-k label *sets* agree, and the mean overlap."""
    ta = np.argsort(-a, 1)[:, :k]
    tb = np.argsort(-b, 1)[:, :k]
    same = [set(x) == set(y) for x, y in zip(ta, tb, strict=True)]
    overlap = [len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]
    return {"top5_identical": float(np.mean(same)), "top5_overlap": float(np.mean(overlap))}


def time_session(sess, images: np.ndarray, batch: int, runs: int) -> dict:  # noqa: ANN001
    x = np.ascontiguousarray(images[:batch])
    if len(x) < batch:
        x = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
    sess.run(None, {VISUAL_INPUT: x})  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {VISUAL_INPUT: x})
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "runs": runs, "median_ms": 1000 * med,
            "min_ms": 1000 * min(times), "max_ms": 1000 * max(times),
            "images_per_s": batch / med}


# ------------------------------------------------------------------ the artifact


def _load_json(value) -> dict:  # noqa: ANN001
    if value is None:
        return {}
    if isinstance(value, str | Path):
        return json.loads(Path(value).read_text())
    return dict(value)


def weights_version(tagger) -> str:  # noqa: ANN001 - a Tagger
    """A version of the model's own when none is given: the configuration's base version
    (0.0.0 when it has none) plus a digest of the configuration and every trained tensor, so
    a retrained model never answers as the version of another (`0.0.0+w1a2b3c4d5e`)."""
    import torch

    digest = hashlib.sha256(json.dumps(tagger.config, sort_keys=True, default=str).encode())
    modules = [tagger.head, tagger.label_transform,
               *([tagger.backbone] if getattr(tagger, "backbone_finetuned", False) else [])]
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return f"{tagger.config.get('version', '0.0.0')}+w{digest.hexdigest()[:10]}"


def export_artifact(checkpoint_path, out_dir: str | Path, calibration_data=None,  # noqa: ANN001
                    variants: Sequence[str] = ("fp16", "int8"), *, accuracy=None,  # noqa: ANN001
                    provenance: Mapping | None = None, agreement_images: np.ndarray | None = None,
                    calibration_images: np.ndarray | None = None, name: str | None = None,
                    version: str | None = None, embedder=None,  # noqa: ANN001
                    timing_runs: int = 10, int8_ranges: str | Path | None = None) -> Path:
    """Write the artifact directory for `checkpoint_path` (a checkpoint file or a Tagger).

    calibration_data: validation scores and targets (`calibration_fit`): the trainer's .npz
      (per-label, with the labels trained on: a novelty-aware fit), a dict or a (scores,
      targets) pair; targets 1/0 (−1 ignored). None → no calibration in the manifest.
    accuracy: the trainer's eval JSON (dict or path), stored as the manifest's `accuracy`.
    agreement_images / calibration_images: float32 [N,3,H,W] for the variants' top-5 agreement
      and int8 calibration (default: 32 VOC images/val and 32 VOC images/train; random images
      when VOC is not present).
    int8_ranges: an `ml2p quantize` file (method, exclusion, calibration ranges): the int8
      graph is built from it alone, without calibration images.
    """
    import onnx
    import torch

    from models.label_embedders import embedder_from_config
    from models.tagger import Tagger, save_checkpoint

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tagger = load_tagger(checkpoint_path)
    cfg = tagger.config
    embedder = embedder or embedder_from_config(cfg["embedder"])
    size = int(cfg.get("input_size", 224))

    # the checkpoint travels with the artifact (torch engine)
    if isinstance(checkpoint_path, Tagger):
        save_checkpoint(tagger, out / "tagger.pt", history=getattr(tagger, "history", None),
                        provenance=getattr(tagger, "provenance", None))
    elif Path(checkpoint_path).resolve() != (out / "tagger.pt").resolve():
        shutil.copyfile(checkpoint_path, out / "tagger.pt")

    with torch.no_grad():
        export_visual(tagger, out / "visual.onnx")
        if tagger.explains:  # a second graph: the default one stays as it is, and as fast
            export_visual(tagger, out / EXPLAIN_FILE, explain=True)
        export_text(tagger, out / "text.onnx", embedder)
    write_tokenizer(embedder.tokenizer_path, out / "tokenizer.json")
    t_graphs = time.perf_counter() - t_start

    # graph checks + output dims from the graphs themselves
    vis = onnx.load(str(out / "visual.onnx"))
    out_dims = [d.dim_value for d in vis.graph.output[0].type.tensor_type.shape.dim]
    groups, dim = int(out_dims[1]), int(out_dims[2])

    # GFLOPs counted from the graphs
    from models.flops import count_flops

    vocab, vocab_source = vocabulary_texts()
    label_tokens = median_token_length(out / "tokenizer.json", vocab)
    f_img = count_flops(vis, {VISUAL_INPUT: (1, 3, size, size)})
    f_lab = count_flops(out / "text.onnx", {name: (1, label_tokens) for name in TEXT_INPUTS})

    manifest = Manifest(
        name=name or cfg.get("name", "ml2p"),
        version=version or weights_version(tagger),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        backbone=cfg["backbone"],
        head=cfg["head"],
        input_size=size,
        preprocessing=PreprocessingSpec.of(Preprocessing(size=size)),
        groups=groups,
        dim=dim,
        label_embedder={**embedder.to_config(), "embed_dim": int(cfg["embed_dim"]),
                        "max_tokens": int(getattr(embedder, "max_length", 256)),
                        "pooling": "mean over attention mask, L2-normalised",
                        "label_transform": "normalize(P · normalize(e − μ))"},
        files={"visual": "visual.onnx", "text": "text.onnx", "tokenizer": "tokenizer.json",
               "checkpoint": "tagger.pt"},
        io={"visual": {"inputs": {VISUAL_INPUT: ["N", 3, size, size]},
                       "outputs": {VISUAL_OUTPUT: ["N", groups, dim]}},
            "text": {"inputs": {name: ["N", "T"] for name in TEXT_INPUTS},
                     "outputs": {TEXT_OUTPUT: ["N", dim]}},
            "opset": OPSET},
        gflops=GflopsSpec(
            image=f_img.gflops, label=f_lab.gflops, label_tokens=label_tokens,
            label_tokens_rule=f"median token length (incl. [CLS]/[SEP]) of the VOC + EmojiTags "
                              f"vocabulary ({len(vocab)} labels: {vocab_source})",
            image_elementwise=f_img.elementwise_flops / 1e9,
            label_elementwise=f_lab.elementwise_flops / 1e9,
            scoring_per_label_per_image=2 * groups * dim / 1e9,
            convention=FLOPS_CONVENTION),
        calibration=(Calibration(**calibration_fit(calibration_data, out))
                     if calibration_data is not None else None),
        accuracy=_load_json(accuracy),
        provenance={**(getattr(tagger, "provenance", None) or {}), **dict(provenance or {}),
                    "export_commit": git_commit(),
                    "exporter": f"torch {torch.__version__} TorchScript exporter, onnx "
                                f"{onnx.__version__}, opset {OPSET}"},
        variants={},
        explain=explain_spec(out / EXPLAIN_FILE, size, dim) if tagger.explains else None,
    )

    # fp32 reference on real images, label set for agreement
    if agreement_images is None:
        agreement_images = sample_images(32, "val")
    if calibration_images is None and "int8" in variants and int8_ranges is None:
        calibration_images = sample_images(32, "train")
    label_vecs = label_vectors(out, vocab[:200])
    labels = vocab[:200]
    fp32 = session(out / "visual.onnx")
    ref = fp32.run(None, {VISUAL_INPUT: agreement_images})[0]
    ref_scores = scores_of(ref, label_vecs)
    entries = {"fp32": ("visual.onnx", fp32)}
    notes = dict(VARIANT_NOTES)
    for variant in variants:
        path = out / f"visual.{variant}.onnx"
        notes[variant] = make_variant(variant, out / "visual.onnx", path, int8_ranges,
                                      calibration_images)
        if manifest.explain is not None:  # the maps' graph in the same precision
            make_variant(variant, out / EXPLAIN_FILE, out / explain_file(variant), int8_ranges,
                         calibration_images)
            manifest.explain.files[variant] = explain_file(variant)
        entries[variant] = (path.name, session(path))
    measured = (manifest.accuracy.get("variants") or {}).get("results", {})
    for variant, (fname, sess) in entries.items():
        got = sess.run(None, {VISUAL_INPUT: agreement_images})[0]
        entry = measured.get(variant)
        digest = hashlib.sha256((out / fname).read_bytes()).hexdigest()
        if entry is not None and entry.get("sha256") != digest:
            log.warning("the accuracy measured for the %s graph is of another build (sha256 "
                        "differs): not recorded, so precision=auto will not serve it", variant)
            entry = None
        manifest.variants[variant] = Variant(
            file=fname,
            precision=notes[variant],
            agreement=VariantAgreement(
                **top5_agreement(ref_scores, scores_of(got, label_vecs)),
                max_abs_diff_groups=float(np.abs(got - ref).max()),
                images=int(len(agreement_images)), labels=len(labels),
                reference="visual.onnx (fp32)"),
            accuracy=VariantAccuracy(**entry) if entry is not None else None,
            speed_cpu_1_thread={"batch1": time_session(sess, agreement_images, 1, timing_runs)},
        )
    manifest.export_seconds = round(time.perf_counter() - t_start, 1)
    manifest.export_graph_seconds = round(t_graphs, 1)
    (out / "manifest.json").write_text(manifest.to_json())
    load_artifact(out)  # the server's own loader: files present, manifest valid
    log.info("artifact %s written in %.0f s", out, manifest.export_seconds)
    return out
