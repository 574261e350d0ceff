"""Backbones: tap shapes, packaged weights classify real photos, ONNX export, VGG layout."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import available_backbones, create_backbone, vgg19_bn
from models.backbones.vgg19_bn import VGG19BN

VOC_VAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "voc2007" / "images" / "val"


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0").eval()


def test_registry():
    assert {"efficientnet_lite0", "vgg19_bn"} <= set(available_backbones())
    with pytest.raises(KeyError, match="available"):
        create_backbone("resnet9000")


def test_lite0_taps(lite0):
    assert lite0.tap_channels == (40, 112, 320) and lite0.has_classifier
    with torch.no_grad():
        t8, t16, t32, logits = lite0.forward_all(torch.randn(2, 3, 224, 224))
        assert t8.shape == (2, 40, 28, 28)
        assert t16.shape == (2, 112, 14, 14)
        assert t32.shape == (2, 320, 7, 7)
        assert logits.shape == (2, 1000)
        x = torch.randn(1, 3, 224, 224)
        # one trunk pass gives the package model's own logits
        torch.testing.assert_close(lite0.classify(x), lite0.net(x))


@pytest.mark.skipif(not VOC_VAL.exists(), reason="VOC photos not available")
def test_lite0_classifies_real_photos(lite0):
    from artifact.imaging import load_and_preprocess

    dogs = ["001053", "009117", "004565", "004352"]
    cats = ["006725", "003807", "008720"]
    x = torch.stack([torch.from_numpy(load_and_preprocess(str(next(VOC_VAL.glob(f"{i}_*")))))
                     for i in dogs + cats])
    with torch.no_grad():
        top = lite0.classify(x).argmax(1).tolist()
    assert sum(151 <= c <= 268 for c in top[:4]) >= 3  # ImageNet dog breeds
    assert sum(281 <= c <= 285 for c in top[4:]) >= 2  # domestic cats


def test_lite0_onnx_export_dynamic_batch(lite0, tmp_path):
    import onnxruntime as ort

    class All(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = lite0

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.net.forward_all(x)

    names = ["t8", "t16", "t32", "logits"]
    path = tmp_path / "lite0.onnx"
    torch.onnx.export(All().eval(), (torch.zeros(1, 3, 224, 224),), str(path),
                      input_names=["image"], output_names=names, opset_version=17,
                      dynamic_axes={n: {0: "batch"} for n in ["image", *names]}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 224, 224)
    outs = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = lite0.forward_all(x)
    for got, want in zip(outs, ref, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-3, rtol=1e-3)


def test_vgg_refuses_without_weights():
    with pytest.raises(ValueError, match="random_init=True"):
        create_backbone("vgg19_bn")


def test_vgg_layout_and_taps(tmp_path, monkeypatch):
    vgg = create_backbone("vgg19_bn", random_init=True).eval()
    assert len(vgg.features) == 53 and vgg.tap_indices == (26, 39, 52)
    assert not vgg.has_classifier
    with torch.no_grad():
        t8, t16, t32 = vgg(torch.randn(1, 3, 64, 64))  # small input: strides 8/16/32
    assert t8.shape == (1, 256, 8, 8) and t16.shape == (1, 512, 4, 4)
    assert t32.shape == (1, 512, 2, 2)
    # a torchvision-style state dict ("features.<index>.*" + "classifier.*") loads by index
    state = {f"features.{k}": torch.randn_like(v) if v.is_floating_point() else v
             for k, v in vgg.features.state_dict().items()}
    # the real classifier is 123 M parameters; a stand-in checks the `classifier.*` path
    monkeypatch.setattr(vgg19_bn, "make_classifier", lambda: torch.nn.Sequential(
        torch.nn.Linear(4, 2)))
    state.update({f"classifier.{k}": v for k, v in vgg19_bn.make_classifier().state_dict().items()})
    torch.save(state, tmp_path / "vgg19_bn.pth")
    loaded = VGG19BN(weights=str(tmp_path / "vgg19_bn.pth"))
    torch.testing.assert_close(loaded.features[14].weight, state["features.14.weight"])
    torch.testing.assert_close(loaded.features[50].running_var, state["features.50.running_var"])
    assert loaded.has_classifier
