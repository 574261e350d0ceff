"""Export: an untrained small Tagger → artifact dir; graphs load in onnxruntime with the contract's
names and shapes; manifest fields; FLOP counter against hand counts; broken artifacts refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from models.flops import count_flops

torch.set_num_threads(1)

SMALL = {"name": "tiny", "version": "0.0.1", "backbone": "efficientnet_lite0", "head": "ml2p",
         "head_kwargs": {"groups": 3, "widths": [16, 16, 32]}, "embedder": {"kind": "minilm"},
         "dim": 24, "label_projection": True}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from models.export import export_artifact
    from models.tagger import build_tagger, save_checkpoint

    torch.manual_seed(0)
    tagger = build_tagger(SMALL).eval()
    tmp = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(tagger, tmp / "ckpt.pt")
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    scores = rng.normal(size=400)
    targets = (scores + rng.normal(size=400) > 0.5).astype(np.int8)
    out = export_artifact(ckpt, tmp / "art", calibration_data={"scores": scores,
                                                               "targets": targets},
                          accuracy={"voc2007": {"zsl": {"map": 0.5}}},
                          agreement_images=images, calibration_images=images, timing_runs=2)
    return out, tagger, images


def test_files_and_graph_io(artifact):
    import onnxruntime as ort

    out, tagger, images = artifact
    for name in ("manifest.json", "visual.onnx", "text.onnx", "tokenizer.json", "tagger.pt",
                 "visual.fp16.onnx", "visual.int8.onnx"):
        assert (out / name).is_file(), name
    vis = ort.InferenceSession(str(out / "visual.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in vis.get_inputs()] == ["image"]
    assert vis.get_inputs()[0].shape[1:] == [3, 224, 224]
    assert isinstance(vis.get_inputs()[0].shape[0], str)  # dynamic batch
    assert [o.name for o in vis.get_outputs()] == ["groups"]
    got = vis.run(None, {"image": images[:3]})[0]
    assert got.shape == (3, 3, 24) and got.dtype == np.float32
    with torch.no_grad():
        ref = tagger.encode_images(torch.from_numpy(images[:3])).numpy()
    assert np.abs(got - ref).max() < 1e-4

    txt = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in txt.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in txt.get_outputs()] == ["embedding"]
    from models.export import tokenize

    ids, mask = tokenize(out / "tokenizer.json", ["dog", "a red double decker bus"])
    emb = txt.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert emb.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    model = onnx.load(str(out / "visual.onnx"))
    assert model.opset_import[0].version >= 17
    onnx.checker.check_model(model, full_check=True)


def test_relevance_map_graphs_match_the_module(artifact):
    """The second graph, per precision: the plain graph's vectors plus the map terms, as the
    torch module computes them; the manifest names the files and the grid."""
    import onnxruntime as ort

    from artifact.manifest import Manifest
    from models.inference import VisualRunner

    out, tagger, images = artifact
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    spec = manifest.explain
    assert spec is not None and (spec.rows, spec.cols) == (7, 7)
    assert spec.files == {"fp32": "visual_explain.onnx", "fp16": "visual_explain.fp16.onnx",
                          "int8": "visual_explain.int8.onnx"}
    assert spec.gflops_image > manifest.gflops.image  # the per-position terms cost something
    torch_out = VisualRunner(tagger, "cpu").explain(images[:2])
    plain = ort.InferenceSession(str(out / "visual.onnx"), providers=["CPUExecutionProvider"])
    for variant, name in spec.files.items():
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        assert [o.name for o in sess.get_outputs()] == ["groups", "positions", "evidence"]
        got = sess.run(None, {"image": images[:2]})
        assert got[1].shape == (2, 3, 49, 24) and got[2].shape == (2, 3, 24)
        if variant == "fp32":
            for ours, ref in zip(got, torch_out, strict=True):
                np.testing.assert_allclose(ours, ref, atol=1e-4)
            np.testing.assert_allclose(got[0], plain.run(None, {"image": images[:2]})[0],
                                       atol=1e-5)


def test_tokenizer_has_no_truncation(artifact):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(artifact[0] / "tokenizer.json"))
    assert tok.truncation is None
    assert len(tok.encode(" ".join(["word"] * 400)).ids) == 402


def test_manifest(artifact):
    out = artifact[0]
    m = json.loads((out / "manifest.json").read_text())
    assert (m["name"], m["backbone"]) == ("tiny", "efficientnet_lite0")
    assert m["version"].startswith("0.0.1+w")  # the configuration's base + the weights' digest
    assert (m["groups"], m["dim"]) == (3, 24)
    assert m["preprocessing"]["size"] == 224 and len(m["preprocessing"]["mean"]) == 3
    assert m["label_embedder"]["kind"] == "minilm" and m["label_embedder"]["max_tokens"] == 256
    assert m["files"]["visual"] == "visual.onnx"
    g = m["gflops"]
    assert 0.5 < g["image"] < 2.0  # Lite0 ≈ 0.8 GFLOPs + the small head
    assert 0.01 < g["label"] < 0.5 and g["label_tokens"] >= 3
    cal = m["calibration"]
    assert cal["kind"] == "logistic" and cal["a"] > 0
    assert m["accuracy"] == {"voc2007": {"zsl": {"map": 0.5}}}
    assert m["provenance"]["exporter"].startswith("torch")
    assert set(m["variants"]) == {"fp32", "fp16", "int8"}
    fp16 = m["variants"]["fp16"]["agreement"]
    assert fp16["max_abs_diff_groups"] < 0.05 and 0 <= fp16["top5_overlap"] <= 1


def _conv_macs(side: int, cin: int, cout: int, kernel: int = 1, groups: int = 1) -> int:
    return side * side * cout * (cin // groups) * kernel * kernel


# EfficientNet-Lite0's MBConv stages: (expansion, kernel, first stride, out channels, repeats)
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def test_gflops_match_a_hand_count(artifact):
    """The counted Conv FLOPs equal a count by hand from Lite0's block table (stem, then
    expand 1×1 / depthwise k×k / project 1×1 per block, up to the 320-channel tap; no 1280
    head conv: this head reads no ImageNet logits) plus the small ML2P head's convolutions."""
    out = artifact[0]
    report = count_flops(out / "visual.onnx", {"image": (2, 3, 224, 224)})
    single = json.loads((out / "manifest.json").read_text())["gflops"]["image"]
    assert report.gflops == pytest.approx(2 * single, rel=1e-9)  # linear in the batch
    macs = _conv_macs(112, 3, 32, 3)  # stem: 3×3, stride 2 → 112×112
    side, cin = 112, 32
    for expansion, kernel, stride, cout, repeats in LITE0_STAGES:
        for block in range(repeats):
            mid = cin * expansion
            if expansion != 1:
                macs += _conv_macs(side, cin, mid)
            side //= stride if block == 0 else 1
            macs += _conv_macs(side, mid, mid, kernel, groups=mid)
            macs += _conv_macs(side, mid, cout)
            cin = cout
    assert macs == 363_837_152  # the trunk alone, 0.36 G multiply-adds
    g, d = SMALL["head_kwargs"]["groups"], SMALL["dim"]
    w1, w2, w3 = SMALL["head_kwargs"]["widths"]
    head = (_conv_macs(28, 40, w1) + _conv_macs(14, 112, w2) + _conv_macs(7, 320, w3)  # taps
            + _conv_macs(7, w1 + w2 + w3, g * d)  # embedding to G·D
            + _conv_macs(7, g * d, 3 * g * d)  # q, k, v
            + _conv_macs(7, 3 * g * d, 3 * g * d, 3, groups=3 * g * d))  # their 3×3 depthwise
    assert report.by_op["Conv"] == 2 * 2 * (macs + head)  # 2 images, 2 FLOPs per MAC


def _graph(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_flop_counter_on_hand_graph():
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    wg = onnx.numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "wg")
    m2 = onnx.numpy_helper.from_array(rng.normal(size=(16, 5)).astype(np.float32), "m2")
    g2 = onnx.numpy_helper.from_array(rng.normal(size=(5, 7)).astype(np.float32), "g2")
    shape = onnx.numpy_helper.from_array(np.array([0, 8, 16], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # [N,8,4,4]
        helper.make_node("Conv", ["c", "wg"], ["d"], pads=[1, 1, 1, 1], group=8),  # depthwise
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["s"]),  # [N,8,16]
        helper.make_node("MatMul", ["s", "m2"], ["mm"]),  # [N,8,5]
        helper.make_node("Flatten", ["mm"], ["f"], axis=2),  # [N*8,5]
        helper.make_node("Gemm", ["f", "g2"], ["y"]),  # [N*8,7]
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 7])
    model = _graph(nodes, [x], [y], [w, wg, m2, g2, shape])
    onnx.checker.check_model(model)
    n = 2
    conv = n * 8 * 4 * 4 * 3 * 3 * 3
    dw = n * 8 * 4 * 4 * 1 * 3 * 3
    mm = n * 8 * 16 * 5
    gemm = n * 8 * 5 * 7
    report = count_flops(model, {"x": (n, 3, 4, 4)})
    assert report.macs == conv + dw + mm + gemm
    assert report.flops == 2 * (conv + dw + mm + gemm)
    assert report.by_op == {"Conv": 2 * (conv + dw), "MatMul": 2 * mm, "Gemm": 2 * gemm}
    assert report.elementwise_flops == n * 8 * 4 * 4  # the Relu


def test_attention_matmul_counted_with_dynamic_shapes():
    """Q·Kᵀ over a runtime-computed shape: MatMul of [N,T,E] × [N,E,T]."""
    nodes = [helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["a"])]
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", "T", 6])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "T", "T"])
    report = count_flops(_graph(nodes, [q], [a]), {"q": (2, 5, 6)})
    assert report.macs == 2 * 5 * 5 * 6


def test_calibration_fit_recovers_a_logistic():
    from models.export import fit_calibration

    rng = np.random.default_rng(0)
    s = rng.normal(size=20000)
    y = rng.uniform(size=s.size) < 1 / (1 + np.exp(-(3.0 * s - 1.0)))
    cal = fit_calibration(s, y.astype(int))
    assert cal["a"] == pytest.approx(3.0, rel=0.1) and cal["b"] == pytest.approx(-1.0, abs=0.1)
    with pytest.raises(ValueError):
        fit_calibration([0.1, 0.2], [1, 1])


def test_novelty_calibration_fit_from_a_trainers_file(artifact, tmp_path):
    """A trainer's per-label file: the unseen labels' novelty is measured through the
    artifact's text graph and the fit recovers a curve of their own (here: the same score
    means more for a novel label, as for unseen labels, which score lower)."""
    from artifact.manifest import Calibration, label_novelty
    from models.export import calibration_fit, label_vectors

    out = artifact[0]
    labels, reference = ["dog", "cat", "red sports car", "sofa"], ["dog", "cat"]
    novelty = label_novelty(label_vectors(out, labels), label_vectors(out, reference))
    assert novelty[:2] == pytest.approx([0, 0], abs=1e-6) and (novelty[2:] > 0.05).all()
    rng = np.random.default_rng(0)
    index = rng.integers(0, 4, 40000)
    s = rng.normal(size=index.size)
    truth = Calibration(kind="logistic-novelty", a=3.0, b=-1.0, c=4.0, d=-1.0,
                        reference_labels=reference)
    y = rng.uniform(size=s.size) < truth.probabilities(s, novelty[index])
    path = tmp_path / "calibration.npz"
    np.savez(path, scores=s.astype(np.float16), targets=y.astype(np.int8), label_index=index,
             labels=np.array(labels), reference_labels=np.array(reference))
    fit = Calibration(**calibration_fit(path, out))
    assert fit.uses_novelty and fit.reference_labels == reference
    assert fit.a == pytest.approx(3.0, rel=0.1) and fit.b == pytest.approx(-1.0, abs=0.1)
    assert fit.c == pytest.approx(4.0, rel=0.25)
    assert fit.score_only is not None and fit.nll < fit.score_only["nll"]
    # a flat (scores, targets) pair still fits one curve
    assert calibration_fit((s, y.astype(np.int8)), out)["kind"] == "logistic"


def test_loads_in_the_service_and_broken_artifacts_fail(artifact, tmp_path):
    import artifact.loader as artifact_mod
    from artifact.errors import ArtifactError

    out = artifact[0]
    loaded = artifact_mod.load_artifact(out)
    assert loaded.manifest.groups == 3 and loaded.manifest.gflops.image > 0
    assert loaded.manifest.calibration is not None

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "text.onnx").unlink()
    with pytest.raises(ArtifactError, match="text.onnx"):
        artifact_mod.load_artifact(broken)

    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    m = json.loads((wrong / "manifest.json").read_text())
    m["dim"] = 99
    (wrong / "manifest.json").write_text(json.dumps(m))
    from service.runtime.onnxrt import OnnxRuntimeEngine
    from service.settings import Settings

    settings = Settings(model=wrong, intra_op_threads=1)
    with pytest.raises(ArtifactError, match="99"):
        OnnxRuntimeEngine(artifact_mod.load_artifact(wrong), settings)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    (corrupt / "visual.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ArtifactError, match="visual.onnx"):
        OnnxRuntimeEngine(artifact_mod.load_artifact(corrupt), settings)


def test_a_model_without_a_given_version_gets_one_of_its_own():
    """The base version from the configuration plus a digest of the trained tensors: the
    same weights give the same version, other weights another one."""
    import torch

    from models.export import weights_version
    from models.tagger import load_checkpoint

    weights = Path(__file__).resolve().parents[2] / "models" / "weights" / "default.pt"
    tagger = load_checkpoint(weights)
    version = weights_version(tagger)
    assert version.startswith(f"{tagger.config['version']}+w") and version != "0.1.0"
    assert weights_version(load_checkpoint(weights)) == version
    with torch.no_grad():
        next(tagger.head.parameters()).add_(1e-3)
    assert weights_version(tagger) != version
