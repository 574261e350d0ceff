"""Parity: the torch model vs every engine available here, on 32 random + 32 real VOC images and
200 labels. fp32: max abs diff ≤ 1e-4 on groups and label embeddings, identical top-5 on ≥ 99 %
of images. fp16 / int8 graphs against the fp32 graph: the tolerances in VARIANT_TOLERANCE.

Uses `models/zoo/default/` (its `tagger.pt`) when it exists, else the committed default
weights (`models/weights/default.pt`) exported to a temporary artifact; an untrained seeded
Tagger only when neither is there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "models" / "zoo" / "default"
WEIGHTS = REPO / "models" / "weights" / "default.pt"
VOC_VAL = Path(os.environ.get("ML2P_VOC_ROOT", REPO.parent / "shared/data/voc2007")) / "images/val"
TOL = 1e-4
REAL_IMAGES = 32
LABELS = 200


def untrained_tagger():  # noqa: ANN201
    from models.tagger import build_tagger

    torch.manual_seed(0)
    tagger = build_tagger({"name": "parity", "head_kwargs": {"groups": 7,
                                                             "widths": [64, 128, 256]},
                           "dim": 128}).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # untrained BN stats/identity would hide diffs: randomise them
        for m in tagger.head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        tagger.label_transform.mean.normal_(0, 0.05)
    return tagger


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from artifact.imaging import Preprocessing, load_and_preprocess
    from models.export import export_artifact, vocabulary_texts
    from models.tagger import load_checkpoint
    from models.vocab import imagenet_class_names

    rng = np.random.default_rng(0)
    random_images = rng.uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32)
    if not VOC_VAL.is_dir():
        pytest.skip(f"no VOC photos at {VOC_VAL} (set ML2P_VOC_ROOT): parity is checked on "
                    "32 real images, not on random pixels alone")
    paths = sorted(VOC_VAL.glob("*.jpg"))[:REAL_IMAGES]
    if len(paths) < REAL_IMAGES:
        pytest.fail(f"{VOC_VAL} holds {len(paths)} JPEGs; parity needs {REAL_IMAGES}")
    real = np.stack([load_and_preprocess(str(p), Preprocessing()) for p in paths])
    images = np.concatenate([random_images, real])
    # the served vocabularies, topped up with ImageNet class names when the EmojiTags
    # keywords are not built here: always LABELS distinct texts
    labels = list(dict.fromkeys(vocabulary_texts()[0] + imagenet_class_names()))[:LABELS]
    assert len(labels) == LABELS

    if (DEFAULT / "manifest.json").exists() and (DEFAULT / "tagger.pt").exists():
        art = DEFAULT
        tagger = load_checkpoint(art / "tagger.pt")
    else:
        tagger = load_checkpoint(WEIGHTS) if WEIGHTS.exists() else untrained_tagger()
        art = export_artifact(tagger, tmp_path_factory.mktemp("parity") / "art",
                              agreement_images=real[:16],
                              calibration_images=random_images[:16], timing_runs=2)
    tagger.attach_backbone()
    tagger.eval()
    with torch.no_grad():
        ref_groups = np.concatenate([tagger.encode_images(torch.from_numpy(images[i:i + 16]))
                                     .numpy() for i in range(0, len(images), 16)])
    from models.label_embedders import embedder_from_config

    raw = embedder_from_config(tagger.config["embedder"]).embed(labels)
    with torch.no_grad():
        ref_labels = tagger.transform_labels(raw).numpy()
    return {"art": art, "images": images, "labels": labels, "groups": ref_groups,
            "label_vecs": ref_labels, "real": len(real)}


def _engines(art):
    from artifact.loader import load_artifact
    from service.settings import Settings

    artifact = load_artifact(art)
    out = {}
    from service.runtime.onnxrt import OnnxRuntimeEngine

    out["onnxruntime-cpu"] = OnnxRuntimeEngine(
        artifact, Settings(model=art, engine="onnxruntime-cpu", intra_op_threads=1))
    from service.runtime.torch_engine import TorchEngine

    out["torch"] = TorchEngine(artifact, Settings(model=art, engine="torch", intra_op_threads=1),
                               device="cpu")
    return out


def _top5(groups, labels):
    scores = np.einsum("bgd,ld->bgl", groups, labels).max(1)
    return np.argsort(-scores, 1)[:, :5]


def test_fp32_engines_match_torch(setup):
    s = setup
    assert s["real"] == REAL_IMAGES and len(s["labels"]) == LABELS
    ref_top = _top5(s["groups"], s["label_vecs"])
    for name, engine in _engines(s["art"]).items():
        groups = np.concatenate([engine.encode_images(s["images"][i:i + 16])
                                 for i in range(0, len(s["images"]), 16)])
        label_vecs = engine.encode_labels(s["labels"])
        dg = float(np.abs(groups - s["groups"]).max())
        dl = float(np.abs(label_vecs - s["label_vecs"]).max())
        top = _top5(groups, label_vecs)
        same = np.mean([set(a) == set(b) for a, b in zip(top, ref_top, strict=True)])
        print(f"\n{name}: max|Δgroups| {dg:.2e}  max|Δlabels| {dl:.2e}  top-5 identical {same:.3f}"
              f" ({len(groups)} images, {len(label_vecs)} labels)")
        assert groups.shape == s["groups"].shape and label_vecs.shape == s["label_vecs"].shape
        assert dg <= TOL, name
        assert dl <= TOL, name
        assert same >= 0.99, name


# variant -> (mean |score change| at most, mean top-5 overlap at least) against the fp32 graph
# on the 32 real VOC images and 200 labels: regression guards for the exported graphs (the
# accuracy that decides `precision=auto` is measured on all 990 test images by `ml2p eval
# --variants` and recorded in the manifest); measured 0.003 / 0.99 (fp16), 0.06 / 0.94 (int8)
VARIANT_TOLERANCE = {"fp16": (0.01, 0.95), "int8": (0.1, 0.9)}


@pytest.mark.parametrize("variant", sorted(VARIANT_TOLERANCE))
def test_variant_matches_fp32_within_its_tolerance(setup, variant):
    from models.export import scores_of, session

    s = setup
    path = Path(s["art"]) / f"visual.{variant}.onnx"
    if not path.exists() or not s["real"]:
        pytest.skip(f"needs the {variant} graph and the VOC images")
    real = s["images"][-s["real"]:]
    fp32 = session(Path(s["art"]) / "visual.onnx").run(None, {"image": real})[0]
    got = session(path).run(None, {"image": real})[0]
    ref_scores, scores = scores_of(fp32, s["label_vecs"]), scores_of(got, s["label_vecs"])
    change = float(np.abs(scores - ref_scores).mean())
    ref_top, top = np.argsort(-ref_scores, 1)[:, :5], np.argsort(-scores, 1)[:, :5]
    overlap = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top, ref_top,
                                                                       strict=True)]))
    print(f"\n{variant}: mean |Δscore| {change:.4f}, top-5 overlap {overlap:.3f}")
    most, least = VARIANT_TOLERANCE[variant]
    assert np.isfinite(got).all() and got.shape == fp32.shape
    assert change <= most and overlap >= least, (change, overlap)


def test_relevance_terms_match_torch(setup):
    """The map terms (README "Relevance maps") of the fp32 map graph and of the torch engine
    against the module, on the real images: maps computed by either engine are the module's."""
    from artifact.loader import load_artifact
    from models.tagger import load_checkpoint
    from service.runtime.onnxrt import OnnxRuntimeEngine
    from service.runtime.torch_engine import TorchEngine
    from service.settings import Settings

    s = setup
    art = Path(s["art"])
    real = s["images"][-s["real"]:][:8]
    tagger = load_checkpoint(art / "tagger.pt")
    tagger.attach_backbone()
    with torch.no_grad():
        ref = [t.numpy() for t in tagger.eval().encode_images(torch.from_numpy(real),
                                                               explain=True)]
    artifact = load_artifact(art)
    engines = {
        "onnxruntime-cpu": OnnxRuntimeEngine(artifact, Settings(
            model=art, engine="onnxruntime-cpu", precision="fp32", intra_op_threads=1)),
        "torch": TorchEngine(artifact, Settings(model=art, engine="torch", intra_op_threads=1),
                             device="cpu")}
    for name, engine in engines.items():
        assert engine.explain_missing is None, name
        got = engine.encode_images_explained(real)
        for term, ours, theirs in zip(("groups", "positions", "evidence"), got, ref,
                                      strict=True):
            assert ours.shape == theirs.shape, (name, term)
            assert float(np.abs(ours - theirs).max()) <= 1e-4, (name, term)
