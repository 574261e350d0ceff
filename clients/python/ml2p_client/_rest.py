"""The REST transport: httpx against /v1/* (multipart for images, JSON for vectors)."""

from __future__ import annotations

import base64
import secrets
import ssl

import httpx

from ml2p_client.errors import ML2PError
from ml2p_client.models import (
    Embedding,
    Embeddings,
    LabelWarning,
    ModelInfo,
    RelevanceMap,
    Tag,
    TagResult,
    VectorsModel,
    Vocabulary,
)


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, bytes]]) -> dict:
    """httpx request arguments of a multipart/form-data body built in one piece: httpx's own
    encoder streams it in many small writes, which cost more CPU than the request itself."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                     f"\r\n".encode() + value.encode() + b"\r\n")
    for i, (name, data) in enumerate(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{i}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return {"content": b"".join(parts),
            "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def _tag(tag: dict) -> Tag:
    relevance = tag.get("relevance")
    if relevance is None:
        return Tag.model_construct(**tag)
    png = relevance.get("png")
    return Tag.model_construct(**{**tag, "relevance": RelevanceMap.model_construct(
        **{**relevance, "png": base64.b64decode(png) if png else None})})


def _result(body: dict, tags: list[dict], source: str | None = None) -> TagResult:
    model = body["model"]
    # the server's own schema: constructed without validation (a re-score returns 10⁵ tags)
    return TagResult(tags=[_tag(t) for t in tags],
                     model=f"{model['name']}@{model['version']}",
                     duplicates_removed=body.get("duplicates_removed", []),
                     warnings=[LabelWarning(**w) for w in body.get("warnings", [])],
                     timings_ms=body.get("timings_ms", {}), gflops=body.get("gflops", {}),
                     source=source)


class RestTransport:
    def __init__(self, url: str, api_key: str | None, timeout: float,
                 verify: bool | str | ssl.SSLContext, cert: tuple[str, str] | None) -> None:
        if cert is not None:  # a client certificate: an SSLContext carrying it
            context = (verify if isinstance(verify, ssl.SSLContext) else
                       ssl.create_default_context(cafile=verify if isinstance(verify, str)
                                                  else None))
            context.load_cert_chain(*cert)
            verify = context
        elif isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers,
                                       timeout=timeout, verify=verify)

    async def _send(self, method: str, path: str, timeout: float | None = None,
                    **kwargs: object) -> dict:
        try:
            response = await self._http.request(
                method, path, **kwargs,
                **({"timeout": timeout} if timeout is not None else {}))
        except httpx.TimeoutException as exc:
            raise ML2PError(f"no answer within the timeout ({exc.__class__.__name__})",
                            code="deadline_exceeded", status=504) from None
        except httpx.TransportError as exc:
            raise ML2PError(f"cannot reach {self._http.base_url}: {exc}",
                            code="transport") from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:200]}
            retry_after = response.headers.get("Retry-After")
            raise ML2PError(error.get("message", ""), code=error.get("code", "http_error"),
                            status=response.status_code, field=error.get("field"),
                            retry_after=float(retry_after) if retry_after else None)
        return response.json() if response.content else {}

    async def tag(self, image: bytes, labels: list[str] | None, vocabulary: str | None,
                  options: dict, timeout: float | None, source: str | None) -> TagResult:
        fields = [(k, str(v).lower() if isinstance(v, bool) else str(v))
                  for k, v in options.items() if v is not None]
        # one field per label, each exactly as given
        fields += [("labels", label) for label in labels or ()]
        if vocabulary is not None:
            fields.append(("vocabulary", vocabulary))
        if timeout is not None:
            fields.append(("timeout_ms", str(timeout * 1000)))
        body = await self._send("POST", "/v1/tag", timeout=timeout,
                                **multipart(fields, [("image", image)]))
        return _result(body, body["tags"], source)

    async def embed(self, images: list[bytes], dtype: str, timeout: float | None) -> Embeddings:
        body = await self._send("POST", "/v1/embed", timeout=timeout,
                                **multipart([("dtype", dtype)],
                                            [("images", data) for data in images]))
        return Embeddings(model=VectorsModel(**body["model"]), items=[
            Embedding(shape=e["shape"], dtype=e["dtype"], data=base64.b64decode(e["data"]))
            for e in body["embeddings"]])

    async def score(self, embeddings: Embeddings, labels: list[str] | None,
                    vocabulary: str | None, options: dict, timeout: float | None
                    ) -> list[TagResult]:
        payload = {"model": embeddings.model.model_dump(),
                   "embeddings": [e.wire() for e in embeddings.items],
                   **{k: v for k, v in options.items() if v is not None}}
        if labels is not None:
            payload["labels"] = labels
        if vocabulary is not None:
            payload["vocabulary"] = vocabulary
        body = await self._send("POST", "/v1/score", timeout=timeout, json=payload)
        return [_result(body, r["tags"], e.source)
                for r, e in zip(body["results"], embeddings.items, strict=True)]

    async def put_vocabulary(self, name: str, labels: list[str]) -> Vocabulary:
        body = await self._send("PUT", f"/v1/vocabularies/{name}", json={"labels": labels})
        return Vocabulary(**{k: body[k] for k in Vocabulary.model_fields if k in body})

    async def get_vocabulary(self, name: str) -> Vocabulary:
        body = await self._send("GET", f"/v1/vocabularies/{name}")
        return Vocabulary(**{k: body[k] for k in Vocabulary.model_fields if k in body})

    async def delete_vocabulary(self, name: str) -> None:
        await self._send("DELETE", f"/v1/vocabularies/{name}")

    async def list_vocabularies(self) -> list[str]:
        return (await self._send("GET", "/v1/vocabularies"))["vocabularies"]

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo(**{k: m[k] for k in ModelInfo.model_fields if k in m}, details=m)
                for m in (await self._send("GET", "/v1/models"))["models"]]

    async def ready(self) -> bool:
        try:
            await self._send("GET", "/readyz")
        except ML2PError as error:
            if error.status == 503:
                return False
            raise
        return True

    async def close(self) -> None:
        await self._http.aclose()
