"""The naive baseline of `ml2p bench serve-compare`: FastAPI calling the engine per request.

What a user writes first: one plain `def` endpoint (FastAPI runs it in its thread pool),
decode + preprocess + the same ONNX Runtime engine on a batch of one, no batching, no queue.
Label embeddings are cached per label list (`functools.lru_cache`), so the comparison with
the service measures batching and request handling, not label encoding.

    python -m benchmarks.naive_server --model DIR --port 8010
Accepts the service's multipart form (`image` file, `labels_json` JSON array) on POST /v1/tag.
"""

# no `from __future__ import annotations`: FastAPI resolves the endpoint annotations, which
# are imported inside create_naive_app
import argparse
import json
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def create_naive_app(model: str | Path):
    from fastapi import FastAPI, Form, HTTPException, UploadFile

    from artifact.imaging import ImageDecodeError, decode_image, preprocess
    from artifact.loader import load_artifact
    from service.pipeline.scoring import rank, score
    from service.runtime import create_engine
    from service.settings import Settings

    artifact = load_artifact(model)
    engine = create_engine(Settings(model=model), artifact)
    engine.warmup()
    spec = artifact.preprocessing

    @lru_cache(maxsize=64)
    def label_matrix(labels: tuple[str, ...]):
        return engine.encode_labels(list(labels))

    app = FastAPI(title="naive tagger")

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/tag")
    def tag(image: UploadFile, labels_json: str = Form(...)) -> dict:
        try:
            names = tuple(json.loads(labels_json))
            x = preprocess(decode_image(image.file.read(), target_size=spec.size), spec)
        except (ValueError, ImageDecodeError) as exc:
            raise HTTPException(422, str(exc)) from None
        tags = rank(score(engine.encode_images(x[None]), label_matrix(names))[0], list(names))
        return {"tags": [{"label": t.label, "score": round(float(t.score), 6), "rank": t.rank}
                         for t in tags]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(create_naive_app(args.model), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
