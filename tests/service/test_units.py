"""In-process unit tests: settings, artifact validation, batcher policy, cache, scoring."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import numpy as np
import pytest

from artifact.errors import ArtifactError
from artifact.loader import load_artifact
from artifact.manifest import Calibration, label_novelty
from ml2p_cli import build_parser
from service import protos
from service.cli import settings_from
from service.errors import DeadlineExceeded, InvalidRequest, LabelError, LabelTooLong, QueueFull
from service.metrics import batch_buckets
from service.pipeline.batcher import DynamicBatcher
from service.pipeline.labels import LabelCache, clean_labels
from service.pipeline.scoring import rank, score
from service.pipeline.vocabularies import VocabularyStore
from service.runtime import create_engine
from service.settings import Settings


# --- settings ----------------------------------------------------------------------------
def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("ML2P_HTTP_PORT", "9001")
    monkeypatch.setenv("ML2P_GRPC_PORT", "9002")
    monkeypatch.setenv("ML2P_API_KEY", "")
    args = build_parser().parse_args(["serve", "--grpc-port", "7", "--model", "/m"])
    settings = settings_from(args)
    assert (settings.http_port, settings.grpc_port, str(settings.model)) == (9001, 7, "/m")
    assert settings.api_key is None
    assert Settings().retry_after_s == 1  # a documented default
    assert Settings(engine="onnxruntime-gpu").max_batch_size == 32  # the GPU policy's batches


# --- artifact ----------------------------------------------------------------------------
@pytest.fixture
def artifact_copy(model_dir, tmp_path):
    target = tmp_path / "artifact"
    shutil.copytree(model_dir, target)
    return target


def _edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _start(path) -> None:
    settings = Settings(model=path)
    create_engine(settings, load_artifact(path)).warmup()


@pytest.mark.parametrize("breakage, words", [
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda p: (p / "manifest.json").write_text("{"), "not valid JSON"),
    (lambda p: _edit_manifest(p, groups=0), "groups"),
    (lambda p: (p / "text.onnx").unlink(), "text.onnx (text) is missing"),
    (lambda p: (p / "visual.onnx").write_bytes(b"\x08garbage"), "visual.onnx cannot be loaded"),
    (lambda p: _edit_manifest(p, groups=7), "visual.onnx output 'groups' axis 1"),
    (lambda p: _edit_manifest(p, dim=5), "implies 5"),
    (lambda p: _edit_manifest(p, preprocessing={**json.loads(
        (p / "manifest.json").read_text())["preprocessing"], "size": 48}), "axis 2"),
    (lambda p: (p / "tokenizer.json").write_text("[]"), "tokenizer.json cannot be loaded"),
], ids=["no-manifest", "bad-json", "bad-field", "missing-text", "corrupt-onnx", "wrong-G",
        "wrong-D", "wrong-size", "bad-tokenizer"])
def test_broken_artifacts_fail_with_one_clear_message(artifact_copy, breakage, words):
    if words.startswith(("visual.onnx output", "axis 2")) and _real_model(artifact_copy):
        pytest.skip("static-dim checks are written for the generated model")
    breakage(artifact_copy)
    with pytest.raises(ArtifactError) as info:
        _start(artifact_copy)
    assert words in str(info.value) and str(artifact_copy) in str(info.value)
    assert "\n" not in str(info.value)


def _real_model(path) -> bool:
    return json.loads((path / "manifest.json").read_text())["name"] != "tiny-test"


def test_label_token_limit(model_dir):
    engine = create_engine(Settings(model=model_dir), load_artifact(model_dir))
    limit = engine.tokenizer.max_tokens
    with pytest.raises(LabelTooLong) as info:
        engine.encode_labels(["dog", "dog " * limit])
    assert info.value.field == "labels[1]" and info.value.http_status == 422
    assert engine.encode_labels(["dog " * (limit - 2)]).shape == (1, engine.artifact.manifest.dim)


# --- batcher -----------------------------------------------------------------------------
class _SlowModel:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.sizes = seconds, []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        time.sleep(self.seconds)
        return batch * 2


def _batcher(model, **kw) -> DynamicBatcher:
    defaults = {"max_batch_size": 4, "max_queue_delay_s": 0.5, "max_queue_size": 16}
    return DynamicBatcher(model, **(defaults | kw))


def test_idle_engine_runs_a_lone_request_at_once():
    async def run():
        batcher = _batcher(_SlowModel(0.0))
        batcher.start()
        start = time.perf_counter()
        (result,) = await batcher.submit([np.ones(3, np.float32)], time.perf_counter() + 5)
        took = time.perf_counter() - start
        await batcher.close()
        return result, took

    result, took = asyncio.run(run())
    assert took < 0.25 and result.batch_size == 1  # never waits for the 0.5 s timer
    assert np.array_equal(result.output, np.full(3, 2.0))


def test_arrivals_while_busy_form_batches_up_to_the_maximum():
    model = _SlowModel(0.1)

    async def run():
        batcher = _batcher(model)
        batcher.start()
        deadline = time.perf_counter() + 5
        first = asyncio.ensure_future(batcher.submit([np.zeros(2, np.float32)], deadline))
        await asyncio.sleep(0.02)
        rest = [batcher.submit([np.full(2, i, np.float32)], deadline) for i in range(6)]
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return results

    results = asyncio.run(run())
    assert model.sizes == [1, 4, 2]
    assert [r[0].output[0] for r in results[1:]] == [2.0 * i for i in range(6)]  # order kept


def test_explained_images_batch_apart_and_keep_their_order():
    plain, explained = _SlowModel(0.1), _SlowModel(0.0)

    def explain(batch: np.ndarray) -> list[tuple]:
        return [(row, -row) for row in explained(batch)]

    async def run():
        batcher = _batcher(plain, explain_run=explain)
        batcher.start()
        deadline = time.perf_counter() + 5
        first = asyncio.ensure_future(batcher.submit([np.zeros(2, np.float32)], deadline))
        await asyncio.sleep(0.02)  # queued while the first batch runs: kinds interleaved
        rest = [batcher.submit([np.full(2, i, np.float32)], deadline, explain=i % 2 == 1)
                for i in range(5)]
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return results

    results = asyncio.run(run())
    assert plain.sizes == [1, 3] and explained.sizes == [2]  # never a mixed batch
    for i, (result,) in enumerate(results[1:]):
        if i % 2:
            assert [out[0] for out in result.output] == [2.0 * i, -2.0 * i]
        else:
            assert result.output[0] == 2.0 * i


def test_timer_applies_only_while_another_batch_runs():
    model = _SlowModel(0.2)

    async def run():
        batcher = _batcher(model, workers=2, max_queue_delay_s=0.05)
        batcher.start()
        deadline = time.perf_counter() + 5
        first = asyncio.ensure_future(batcher.submit([np.zeros(1, np.float32)], deadline))
        await asyncio.sleep(0.02)
        second = await batcher.submit([np.zeros(1, np.float32)], deadline)
        await first
        await batcher.close()
        return second[0]

    second = asyncio.run(run())
    assert 0.04 <= second.queue_s < 0.18  # waited for the timer, not for the busy worker


def test_queue_full_and_expired_deadline():
    async def run():
        batcher = _batcher(_SlowModel(0.2), max_queue_size=2)
        batcher.start()
        deadline = time.perf_counter() + 5
        running = asyncio.ensure_future(batcher.submit([np.zeros(1, np.float32)], deadline))
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFull):
            await batcher.submit([np.zeros(1, np.float32)] * 3, deadline)
        with pytest.raises(DeadlineExceeded):  # expires in the queue, never runs
            await batcher.submit([np.zeros(1, np.float32)], time.perf_counter() + 0.05)
        await running
        await batcher.close()

    asyncio.run(run())


# --- labels, scoring ---------------------------------------------------------------------
def test_label_cache_is_lru():
    cache = LabelCache(2)
    cache.put("a", np.zeros(1))
    cache.put("b", np.ones(1))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", np.ones(1))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    LabelCache(0).put("x", np.zeros(1))  # disabled cache stores nothing


def test_clean_labels():
    clean = clean_labels(["Dog", "dog", " cat"], str.lower, max_labels=5, max_chars=10)
    assert clean.texts == ["Dog", " cat"] and clean.duplicates == ["dog"]
    for labels, field in (([], "labels"), (["a", ""], "labels[1]"), (["a"] * 6, "labels"),
                          (["x" * 11], "labels[0]")):
        with pytest.raises(LabelError) as info:
            clean_labels(labels, str.lower, max_labels=5, max_chars=10)
        assert info.value.field == field


def test_scoring_is_max_over_groups_and_independent_per_label():
    groups = np.array([[[1.0, 0.0], [0.0, 0.5]]], np.float32)  # B=1, G=2, D=2
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    assert np.allclose(score(groups, labels), [[1.0, 0.5, 0.6]])
    assert np.allclose(score(groups, labels[1:2]), [[0.5]])
    values = np.array([0.1, 0.9, 0.5])
    tags = rank(values, ["a", "b", "c"], top_k=2, calibration=Calibration(a=10.0, b=-5.0))
    assert [(t.label, t.rank) for t in tags] == [("b", 1), ("c", 2)]
    assert tags[0].probability == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert [t.label for t in rank(np.array([0.1, 0.9, 0.5]), list("abc"), min_score=0.5)] == [
        "b", "c"]
    # probabilities 0.018, 0.98, 0.5: both cut-offs apply (c passes min_score only)
    assert [t.label for t in rank(values, list("abc"), min_score=0.2, min_probability=0.6,
                                  calibration=Calibration(a=10.0, b=-5.0))] == ["b"]
    # a novel c (novelty 0.5, c = 4): probability 0.88, so it passes both
    novel = Calibration(kind="logistic-novelty", a=10.0, b=-5.0, c=4.0, reference_labels=["x"])
    assert [t.label for t in rank(values, list("abc"), min_score=0.2, min_probability=0.6,
                                  calibration=novel, novelty=np.array([0, 0, 0.5]))] == [
        "b", "c"]


def test_novelty_calibration_gives_far_labels_their_own_curve():
    reference = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the labels trained on
    labels = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    novelty = label_novelty(labels, reference)
    assert novelty == pytest.approx([0.0, 0.2, 1.0])
    curve = Calibration(kind="logistic-novelty", a=10.0, b=-5.0, c=2.0, d=0.0,
                        reference_labels=["x", "y"])
    probs = curve.probabilities(np.full((1, 3), 0.4), novelty)  # one score, three labels
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(1.0)))  # a trained label: a·s + b
    assert probs[0, 0] < probs[0, 1] < probs[0, 2]  # the same score means more when novel
    with pytest.raises(ValueError, match="novelty"):
        curve.probabilities(np.zeros(3))


def test_batch_buckets():
    assert batch_buckets(1) == (1.0,)
    assert batch_buckets(32) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


# --- vocabularies, proto generation ------------------------------------------------------
def test_vocabulary_store_persists_and_validates(tmp_path):
    store = VocabularyStore(tmp_path, builtins=True)
    store.load()
    assert "nus-wide-81" in store.names()
    store.put("animals", ["dog", "cat"])
    (tmp_path / "broken.json").write_text("{nope")
    reloaded = VocabularyStore(tmp_path, builtins=False)
    reloaded.load()
    assert reloaded.names() == ["animals"] and reloaded.get("animals").labels == ["dog", "cat"]
    for bad in ("../etc", "a/b", "", ".x", "x" * 65):
        with pytest.raises(InvalidRequest):
            reloaded.put(bad, ["a"])


def test_stubs_come_from_the_client_and_match_the_proto(tmp_path, monkeypatch):
    """The server's stubs are the installed client's (one ml2p.v1 per process), generated
    from this proto; stubs of another version of the proto are refused naming the fix."""
    import ml2p_client._generated as generated

    pb, pb_grpc = protos.load()
    assert pb is generated.tagger_pb2 and pb_grpc is generated.tagger_pb2_grpc
    assert "Embed" in pb.DESCRIPTOR.services_by_name["Tagger"].methods_by_name
    changed = tmp_path / "tagger.proto"
    changed.write_text(protos.PROTO.read_text() + "\n// changed\n")
    monkeypatch.setattr(protos, "PROTO", changed)
    with pytest.raises(RuntimeError, match="make proto"):
        protos.load()


# --- the app in-process: factory, readiness states -----------------------------------------
def test_app_factory_and_readiness_states(model_dir, tmp_path, png):
    import threading

    from fastapi.testclient import TestClient

    from service.api.http import create_app
    from service.pipeline import build_service

    def until_ready(client: TestClient) -> int:
        deadline = time.monotonic() + 10
        while (code := client.get("/readyz").status_code) != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    settings = Settings(model=model_dir, vocab_dir=tmp_path, http_port=0, grpc_port=0)
    with TestClient(create_app(settings=settings)) as client:  # owns its service
        assert until_ready(client) == 200
        r = client.post("/v1/tag", files={"image": ("x.png", png)}, data={"labels": ["dog"]})
        assert r.status_code == 200

    service = build_service(settings)
    gate = threading.Event()
    warmup = service.engine.warmup
    service.engine.warmup = lambda: (gate.wait(10), warmup())
    def ready_gauge(client) -> str:  # noqa: ANN001 - the metric follows /readyz
        (line,) = [x for x in client.get("/metrics").text.splitlines()
                   if x.startswith("ml2p_ready ")]
        return line.split()[1]

    with TestClient(create_app(service)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "still loading" in r.json()["error"]["message"]
        assert ready_gauge(client) == "0.0"
        r = client.post("/v1/tag", files={"image": ("x.png", png)}, data={"labels": ["dog"]})
        assert r.status_code == 503 and client.get("/livez").status_code == 200
        gate.set()
        assert until_ready(client) == 200
        assert ready_gauge(client) == "1.0"

    broken = build_service(settings)
    broken.engine.warmup = lambda: 1 / 0
    with TestClient(create_app(broken)) as client:
        deadline = time.monotonic() + 10
        while broken.state.value != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        r = client.get("/readyz")
        assert r.status_code == 503 and "failed warm-up" in r.json()["error"]["message"]
        assert ready_gauge(client) == "0.0"


def test_a_failed_vocabulary_embedding_is_retried(model_dir, png, tmp_path):
    """The embedding a PUT starts fails; the next request embeds the vocabulary again instead
    of being answered with the remembered failure."""
    from fastapi.testclient import TestClient

    from service.api.http import create_app
    from service.pipeline.tagging import build_service
    from service.settings import Settings

    service = build_service(Settings(model=model_dir, vocab_dir=tmp_path, http_port=0,
                                     grpc_port=0))
    encode, failures = service.label_scheduler._encode, []

    def flaky(texts):  # noqa: ANN001, ANN202
        if "zebra crossing" in texts and not failures:
            failures.append(texts)
            raise RuntimeError("text graph unavailable")
        return encode(texts)

    service.label_scheduler._encode = flaky
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.put("/v1/vocabularies/streets",
                          json={"labels": ["zebra crossing", "lamp post"]}).status_code in (200,
                                                                                           201)
        while not failures and time.monotonic() < deadline + 10:  # the background embedding
            time.sleep(0.02)
        assert failures
        again = client.post("/v1/tag", files={"image": ("x.png", png)},
                            data={"vocabulary": "streets"})
        assert again.status_code == 200, again.text
        assert {t["label"] for t in again.json()["tags"]} == {"zebra crossing", "lamp post"}


def test_a_model_without_calibration_has_no_probability_cut_off(png, tmp_path):
    """Without a calibration there are no probabilities: min_probability is refused naming
    min_score, and the old `threshold` keeps meaning a raw score there."""

    from artifact.testing import write_tiny_artifact
    from service.errors import InvalidRequest
    from service.pipeline import TagOptions
    from service.pipeline.tagging import build_service
    from service.settings import Settings

    art = write_tiny_artifact(tmp_path / "uncalibrated")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["calibration"] = None
    (art / "manifest.json").write_text(json.dumps(manifest))

    async def run() -> None:
        service = build_service(Settings(model=art, vocab_dir=tmp_path, http_port=0,
                                         grpc_port=0))
        await service.start()
        assert await service.wait_ready(30)
        try:
            with pytest.raises(InvalidRequest, match="min_score") as info:
                await service.tag([png], ["dog", "cat"], options=TagOptions(min_probability=0.5))
            assert info.value.field == "min_probability"
            full = (await service.tag([png], ["dog", "cat"])).results[0].tags
            cut = (full[0].score + full[1].score) / 2
            for options in (TagOptions(threshold=cut), TagOptions(min_score=cut)):
                kept = (await service.tag([png], ["dog", "cat"], options=options)).results[0]
                assert [t.label for t in kept.tags] == [full[0].label]
                assert kept.tags[0].probability is None
        finally:
            await service.close()

    asyncio.run(run())


def test_serve_help_states_each_default_once():
    import contextlib
    import io

    from ml2p_cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(out.getvalue().split())
    assert text.count("(default: ") == len(Settings.model_fields)  # one per setting flag
    assert "before ready (default: True; a value after the flag is deprecated)" in text
    assert "(default: the execution policy for the engine and cores)" in text


@pytest.mark.parametrize("target, problem", [("missing.jpg", "no such file"),
                                             (".", "is a directory, not an image file")])
def test_tag_names_an_unreadable_image_in_one_line(tmp_path, capsys, monkeypatch, target,
                                                   problem):
    from ml2p_cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["tag", target, "--labels", "dog"]) == 2
    err = capsys.readouterr().err
    assert err == f"ml2p: error: {target}: {problem}\n"


@pytest.mark.parametrize("argv, warmup", [([], True), (["--warmup"], True),
                                          (["--warmup", "false"], False),
                                          (["--warmup=no"], False)])
def test_boolean_settings_are_switches_and_still_take_a_value(argv, warmup, monkeypatch):
    monkeypatch.delenv("ML2P_WARMUP", raising=False)
    args = build_parser().parse_args(["serve", *argv])
    assert settings_from(args).warmup is warmup
