"""`AsyncClient` (asyncio) and `Client` (the same methods, blocking), over REST or gRPC."""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ml2p_client.errors import ML2PError
from ml2p_client.models import Embeddings, ModelInfo, TagResult, Vocabulary
from ml2p_client.retry import Retry

ImageInput = str | Path | bytes | Any  # a path, encoded bytes, or a PIL image
DEFAULT_RETRY = Retry()


def image_bytes(image: ImageInput) -> tuple[bytes, str | None]:
    """(encoded bytes, the path when given one) of a path, bytes or PIL image."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image), None
    if isinstance(image, str | Path):
        path = Path(image)
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise ML2PError(f"{path}: cannot be read ({exc.strerror})", code="invalid_image",
                            field="image") from None
    if hasattr(image, "save"):  # PIL: lossless PNG when it has transparency or a palette
        buffer = io.BytesIO()
        lossless = image.mode in ("RGBA", "LA", "P", "I", "I;16", "F")
        image.save(buffer, format="PNG" if lossless else "JPEG",
                   **({} if lossless else {"quality": 95}))
        return buffer.getvalue(), None
    raise TypeError(f"an image is a path, bytes or a PIL image, not {type(image).__name__}")


def _options(top_k: int | None, min_probability: float | None, min_score: float | None
             ) -> dict:
    return {"top_k": top_k, "min_probability": min_probability, "min_score": min_score}


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    return (items[i:i + size] for i in range(0, len(items), size))


class AsyncClient:
    """A client of one ML2P server.

    `url`: `http(s)://host:port` for REST, `grpc://host:port` (plaintext) or
    `grpcs://host:port` (TLS) for gRPC; `protocol="grpc"` with an http(s) URL uses gRPC on
    that host and `grpc_port`. `api_key`: the server's bearer key. `timeout`: seconds per
    call (a call's own `timeout=` overrides it; the server receives it as the deadline).
    `verify`: TLS — True (system CAs), a CA bundle path, or (REST only) False / an
    SSLContext; `cert`: (certificate, key) paths for mutual TLS. `retry`: see `Retry`.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 30.0, retry: Retry = DEFAULT_RETRY, verify: Any = True,
                 cert: tuple[str, str] | None = None, protocol: str | None = None,
                 grpc_port: int = 50051) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        protocol = protocol or ("grpc" if parts.scheme in ("grpc", "grpcs") else "rest")
        secure = parts.scheme in ("https", "grpcs")
        self.retry = retry
        if protocol == "rest":
            if parts.scheme not in ("http", "https"):
                raise ValueError(f"REST needs an http(s):// URL, not {url!r}")
            from ml2p_client._rest import RestTransport

            self._transport = RestTransport(url, api_key, timeout, verify, cert)
        elif protocol == "grpc":
            from ml2p_client._grpc import GrpcTransport

            if secure and verify is False:
                raise ValueError("gRPC over TLS always verifies the server: give verify=CA")
            roots = Path(verify).read_bytes() if isinstance(verify, str | Path) else None
            pair = (Path(cert[1]).read_bytes(), Path(cert[0]).read_bytes()) if cert else None
            port = parts.port or (grpc_port if parts.scheme in ("http", "https") else 50051)
            self._transport = GrpcTransport(f"{parts.hostname}:{port}", secure, api_key,
                                            timeout, roots, pair)
        else:
            raise ValueError(f"protocol must be 'rest' or 'grpc', not {protocol!r}")
        self.protocol = protocol

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    async def tag(self, image: ImageInput, labels: Sequence[str] | None = None, *,
                  vocabulary: str | None = None, top_k: int | None = None,
                  min_probability: float | None = None, min_score: float | None = None,
                  timeout: float | None = None, explain: bool = False,
                  explain_top_k: int | None = None, explain_png: bool = False) -> TagResult:
        """Rank `labels` (or a stored `vocabulary`) for one image; `explain=True` adds a
        relevance map (`Tag.relevance`) to each of the first `explain_top_k` tags (the
        server's default: 5), `explain_png=True` a greyscale PNG of each."""
        data, source = image_bytes(image)
        labels = list(labels) if labels is not None else None
        options = _options(top_k, min_probability, min_score)
        if explain:  # sent only when asked, so servers without maps see the request as before
            options |= {"explain": True, "explain_top_k": explain_top_k,
                        "explain_png": explain_png}
        return await self.retry.run(lambda: self._transport.tag(
            data, labels, vocabulary, options, timeout, source))

    async def tag_many(self, images: Iterable[ImageInput], labels: Sequence[str] | None = None,
                       *, vocabulary: str | None = None, top_k: int | None = None,
                       min_probability: float | None = None, min_score: float | None = None,
                       timeout: float | None = None, concurrency: int = 8,
                       progress: bool = False) -> list[TagResult]:
        """`tag` for many images, `concurrency` requests at a time, results in input order
        (a progress bar with `progress=True`, needs tqdm)."""
        images = list(images)
        gate = asyncio.Semaphore(max(1, concurrency))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(images), unit="image")

        async def one(image: ImageInput) -> TagResult:
            async with gate:
                result = await self.tag(image, labels, vocabulary=vocabulary, top_k=top_k,
                                        min_probability=min_probability, min_score=min_score,
                                        timeout=timeout)
            if bar is not None:
                bar.update()
            return result

        try:
            return list(await asyncio.gather(*(one(image) for image in images)))
        finally:
            if bar is not None:
                bar.close()

    async def embed(self, images: Iterable[ImageInput], *, dtype: str = "float16",
                    batch_size: int = 16, timeout: float | None = None) -> Embeddings:
        """Each image's G×D vectors, to keep and `score` later against any labels."""
        encoded = [image_bytes(image) for image in images]
        if not encoded:
            raise ValueError("embed needs at least one image")
        parts = []
        for chunk in _chunks(encoded, batch_size):
            got = await self.retry.run(lambda chunk=chunk: self._transport.embed(
                [data for data, _ in chunk], dtype, timeout))
            for item, (_, source) in zip(got.items, chunk, strict=True):
                item.source = source
            parts.append(got)
        return Embeddings(model=parts[0].model, items=[i for p in parts for i in p.items])

    async def score(self, embeddings: Embeddings, labels: Sequence[str] | None = None, *,
                    vocabulary: str | None = None, top_k: int | None = None,
                    min_probability: float | None = None, min_score: float | None = None,
                    batch_size: int = 1024, timeout: float | None = None) -> list[TagResult]:
        """Stored vectors against `labels` (or a vocabulary): what `tag` would answer for
        the images they came from, without the images."""
        labels = list(labels) if labels is not None else None
        options = _options(top_k, min_probability, min_score)
        results: list[TagResult] = []
        for chunk in _chunks(embeddings.items, batch_size):
            part = Embeddings(model=embeddings.model, items=list(chunk))
            results += await self.retry.run(lambda part=part: self._transport.score(
                part, labels, vocabulary, options, timeout))
        return results

    async def put_vocabulary(self, name: str, labels: Sequence[str]) -> Vocabulary:
        return await self.retry.run(lambda: self._transport.put_vocabulary(name, list(labels)))

    async def get_vocabulary(self, name: str) -> Vocabulary:
        return await self.retry.run(lambda: self._transport.get_vocabulary(name))

    async def delete_vocabulary(self, name: str) -> None:
        await self.retry.run(lambda: self._transport.delete_vocabulary(name))

    async def list_vocabularies(self) -> list[str]:
        return await self.retry.run(self._transport.list_vocabularies)

    async def models(self) -> list[ModelInfo]:
        return await self.retry.run(self._transport.models)

    async def ready(self) -> bool:
        """Whether the server has its model loaded and warmed (no retries)."""
        return await self._transport.ready()


class Client:
    """`AsyncClient`'s methods, blocking: each runs on a private event loop thread, so a
    `Client` also works where another loop is running (e.g. a notebook)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="ml2p-client")
        self._thread.start()
        self._async = self._run(self._make(url, kwargs))

    @staticmethod
    async def _make(url: str, kwargs: dict) -> AsyncClient:
        return AsyncClient(url, **kwargs)  # built on the loop its channels will live on

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def protocol(self) -> str:
        return self._async.protocol

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blocking(name: str) -> Any:
    method = getattr(AsyncClient, name)

    @functools.wraps(method)
    def call(self: Client, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self._async, name)(*args, **kwargs))

    return call


for _name, _member in inspect.getmembers(AsyncClient, inspect.iscoroutinefunction):
    if not _name.startswith("_") and _name != "close":
        setattr(Client, _name, _blocking(_name))
