"""The shipped model through the real server: an image's answer does not depend on the batch
it ran in (dynamic batching must not change scores); probabilities are the manifest's
calibration, each label's novelty measured as the exporter and `ml2p eval` measure it, over
REST and gRPC alike."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_harness import Server, pb, pb_grpc

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "models" / "zoo" / "default"
VOC_VAL = Path(os.environ.get("ML2P_VOC_ROOT", REPO.parent / "shared/data/voc2007")) / "images/val"
LABELS = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
          "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
          "train", "tv monitor", "a red car", "people on a beach"]
TOL = 1e-5


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not (DEFAULT / "manifest.json").is_file():
        pytest.skip("models/zoo/default is not built (`make model`; `make test` builds it)")
    # a slow engine makes the concurrent requests queue, so they run in batches
    srv = Server(DEFAULT, tmp_path_factory.mktemp("real"), max_batch_size=8,
                 inference_delay_ms=300, intra_op_threads=2)
    try:
        yield srv.wait_ready(timeout=120)
    finally:
        srv.stop()


def _photos() -> list[bytes]:
    paths = sorted(VOC_VAL.glob("*.jpg"))[:8]
    if len(paths) < 8:
        pytest.skip(f"VOC images/val not found under {VOC_VAL}")
    return [p.read_bytes() for p in paths]


def test_batched_and_unbatched_answers_are_identical(real: Server) -> None:
    photos = _photos()

    def scores(response: httpx.Response) -> dict[str, float]:
        assert response.status_code == 200, response.text
        return {t["label"]: t["score"] for t in response.json()["tags"]}

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=real.url, timeout=60,
                                     limits=httpx.Limits(max_connections=8)) as client:
            return await asyncio.gather(*(
                client.post("/v1/tag", files={"image": ("p.jpg", data)},
                            data={"labels": LABELS}) for data in photos))

    batched = asyncio.run(together())
    sizes = [r.json()["batch_size"] for r in batched]
    assert max(sizes) > 1, sizes  # the comparison below is about batches
    with httpx.Client(base_url=real.url, timeout=60) as client:
        alone = [client.post("/v1/tag", files={"image": ("p.jpg", data)},
                             data={"labels": LABELS}) for data in photos]
    assert all(r.json()["batch_size"] == 1 for r in alone)
    worst = 0.0
    for in_batch, by_itself in zip(batched, alone, strict=True):
        a, b = scores(in_batch), scores(by_itself)
        assert a.keys() == b.keys() == set(LABELS)
        worst = max(worst, *(abs(a[k] - b[k]) for k in LABELS))
    print(f"batch sizes {sizes}: max |score difference| {worst:.2e}")
    assert worst <= TOL


def test_probabilities_follow_the_manifest_calibration(real: Server) -> None:
    from artifact.loader import load_artifact
    from artifact.manifest import label_novelty
    from models.export import label_vectors

    calibration = load_artifact(DEFAULT).manifest.calibration
    assert calibration is not None and calibration.uses_novelty, "the shipped model's " \
        "calibration should depend on each label's novelty"
    novelty = dict(zip(LABELS, label_novelty(
        label_vectors(DEFAULT, LABELS), label_vectors(DEFAULT, calibration.reference_labels)),
        strict=True))
    assert all(novelty[label] == pytest.approx(0.0, abs=1e-6)
               for label in calibration.reference_labels if label in novelty)
    assert novelty["sofa"] > 0.05 and novelty["people on a beach"] > 0.05
    photo = _photos()[0]
    with httpx.Client(base_url=real.url, timeout=60) as client:
        rest = client.post("/v1/tag", files={"image": ("p.jpg", photo)}, data={"labels": LABELS})
    assert rest.status_code == 200, rest.text
    with real.channel() as channel:
        grpc_tags = pb_grpc.TaggerStub(channel).Tag(pb.TagRequest(image=photo, labels=LABELS),
                                                    timeout=60).tags
    for tags in (rest.json()["tags"], grpc_tags):
        tags = [t if isinstance(t, dict) else
                {"label": t.label, "score": t.score, "probability": t.probability} for t in tags]
        assert len(tags) == len(LABELS)
        expected = calibration.probabilities(np.array([t["score"] for t in tags]),
                                             np.array([novelty[t["label"]] for t in tags]))
        got = np.array([t["probability"] for t in tags])
        assert np.abs(got - expected).max() < 1e-5, (got, expected)


def test_relevance_maps_of_the_shipped_model(real: Server) -> None:
    """explain=true changes no score; maps come 7×7 for the first 5 tags, identical over REST
    and gRPC, and their GFLOPs are the map graph's extra work plus each map's products."""
    photo = _photos()[0]
    with httpx.Client(base_url=real.url, timeout=60) as client:
        plain = client.post("/v1/tag", files={"image": ("p.jpg", photo)},
                            data={"labels": LABELS}).json()
        body = client.post("/v1/tag", files={"image": ("p.jpg", photo)},
                           data={"labels": LABELS, "explain": "true"}).json()
        manifest = client.get("/v1/models").json()["models"][0]
    assert [(t["label"], t["score"]) for t in body["tags"]] == \
        [(t["label"], t["score"]) for t in plain["tags"]]
    maps = [t["relevance"] for t in body["tags"][:5]]
    assert all(t["relevance"] is None for t in body["tags"][5:])
    for relevance in maps:
        assert (relevance["rows"], relevance["cols"]) == (7, 7)
        assert np.isfinite(relevance["values"]).all() and np.ptp(relevance["values"]) > 0
    explain = json.loads((DEFAULT / "manifest.json").read_text())["explain"]
    assert body["gflops"]["explain"] == pytest.approx(
        explain["gflops_image"] - manifest["gflops"]["image"] + 5 * explain["gflops_per_map"])
    with real.channel() as channel:
        reply = pb_grpc.TaggerStub(channel).Tag(pb.TagRequest(image=photo, labels=LABELS,
                                                              explain=True))
    for tag, relevance in zip(reply.tags[:5], maps, strict=True):
        np.testing.assert_allclose(tag.relevance.values, relevance["values"], atol=1e-5)
        assert tag.relevance.evidence == pytest.approx(relevance["evidence"], abs=1e-5)
