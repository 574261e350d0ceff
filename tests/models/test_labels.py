"""Label transform and label embedders (MiniLM offline, word vectors, tables)."""

import json
import pickle

import numpy as np
import pytest
import torch

from models.label_embedders import (
    MiniLMEmbedder,
    UnknownLabelError,
    create_embedder,
    save_table,
)
from models.labels import LabelTransform


def test_label_transform_centres_projects_normalises():
    raw = torch.nn.functional.normalize(torch.randn(20, 16) + 3.0, dim=1)  # anisotropic
    lt = LabelTransform(16, 8, projection=True)
    mean = lt.fit_mean(raw.numpy())
    assert torch.allclose(mean, raw.mean(0))
    out = lt(raw)
    assert out.shape == (20, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(20), atol=1e-6)
    expected = torch.nn.functional.normalize(
        torch.nn.functional.normalize(raw - mean, dim=1) @ lt.projection.weight.T, dim=1)
    assert torch.allclose(out, expected, atol=1e-6)
    # centring removes the shared direction: mean cosine drops
    cos_raw = (raw @ raw.T).mean()
    ident = LabelTransform(16, 16, projection=False)
    ident.fit_mean(raw)
    assert (ident(raw) @ ident(raw).T).mean() < cos_raw
    with pytest.raises(ValueError, match="projection"):
        LabelTransform(16, 8, projection=False)


def test_minilm_offline():
    emb = create_embedder("minilm")
    vecs = emb.embed(["dog", "puppy", "car"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32 and emb.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]
    assert emb.kind == "minilm" and "MiniLM" in emb.model_id and emb.max_length == 256
    # the serving tokenizer + torch module reproduce embed()
    assert isinstance(emb, MiniLMEmbedder)
    tokens = emb.tokenize(["dog", "a red sports car"])
    assert tokens["input_ids"].dtype == np.int64 and tokens["input_ids"].shape[0] == 2
    with torch.no_grad():
        out = emb.torch_module()(torch.from_numpy(tokens["input_ids"]),
                                 torch.from_numpy(tokens["attention_mask"])).numpy()
    np.testing.assert_allclose(out, emb.embed(["dog", "a red sports car"]), atol=1e-5)


def test_word_vectors_glove(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("dog 1 0 0\ncat 0 1 0\nhot 0 0 2\n")
    emb = create_embedder("word-vectors", path=str(path))
    out = emb.embed(["dog", "hot dog", "Cat"])
    np.testing.assert_allclose(out[0], [1, 0, 0])
    np.testing.assert_allclose(out[1], np.array([1, 0, 2]) / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(out[2], [0, 1, 0])
    with pytest.raises(UnknownLabelError, match="zebra") as err:
        emb.embed(["dog", "zebra crossing"])
    assert "crossing" in str(err.value) and isinstance(err.value, KeyError)


def test_word_vectors_nuswide_pickle(tmp_path):
    seen, unseen = np.eye(4, 3)[:3] * 2, np.array([[0.0, 3.0, 4.0]])
    with open(tmp_path / "wv.pkl", "wb") as f:
        pickle.dump([seen, unseen], f)
    (tmp_path / "TagList1k.txt").write_text("sky\nwater\ngrass\n")
    emb = create_embedder("word-vectors", path=str(tmp_path / "wv.pkl"),
                          seen_names=str(tmp_path / "TagList1k.txt"), unseen_names=["sunset"])
    np.testing.assert_allclose(emb.embed(["sunset", "water"]), [[0, 0.6, 0.8], [0, 1, 0]])


def test_table(tmp_path):
    names, vecs = ["a b", "c"], np.array([[3.0, 4.0], [1.0, 0.0]])
    for suffix in (".npz", ".json"):
        save_table(tmp_path / f"t{suffix}", names, vecs)
        emb = create_embedder("table", path=str(tmp_path / f"t{suffix}"))
        np.testing.assert_allclose(emb.embed(["a b"]), [[0.6, 0.8]], rtol=1e-6)
        with pytest.raises(UnknownLabelError, match="'d'"):
            emb.embed(["c", "d"])
    (tmp_path / "plain.json").write_text(json.dumps({"x": [0, 2]}))
    assert create_embedder("table", path=str(tmp_path / "plain.json")).dim == 2
