"""The gRPC transport: grpc.aio against ml2p.v1.Tagger, stubs generated when the wheel was
built (ml2p_client._generated)."""

from __future__ import annotations

import json

import grpc

from ml2p_client._generated import tagger_pb2 as pb
from ml2p_client._generated import tagger_pb2_grpc as pb_grpc
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


def _tags(tags) -> list[Tag]:  # noqa: ANN001 - repeated pb.Tag
    return [Tag(label=t.label, score=t.score, rank=t.rank,
                probability=t.probability if t.HasField("probability") else None,
                relevance=_relevance(t.relevance) if t.HasField("relevance") else None)
            for t in tags]


def _relevance(message) -> RelevanceMap:  # noqa: ANN001 - pb.RelevanceMap
    return RelevanceMap(rows=message.rows, cols=message.cols, values=list(message.values),
                        evidence=message.evidence, png=message.png or None)


def _warnings(warnings) -> list[LabelWarning]:  # noqa: ANN001
    return [LabelWarning(label=w.label, code=w.code, message=w.message) for w in warnings]


def _timings(message) -> dict[str, float]:  # noqa: ANN001 - pb.Timings / pb.Gflops
    return {field.name: getattr(message, field.name) for field in message.DESCRIPTOR.fields}


class GrpcTransport:
    def __init__(self, target: str, secure: bool, api_key: str | None, timeout: float,
                 root_certificates: bytes | None, cert: tuple[bytes, bytes] | None) -> None:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if secure:
            key, chain = cert if cert is not None else (None, None)
            credentials = grpc.ssl_channel_credentials(root_certificates, key, chain)
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = pb_grpc.TaggerStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout = timeout

    async def _call(self, method: str, request, timeout: float | None = None):  # noqa: ANN001, ANN202
        try:
            return await getattr(self._stub, method)(
                request, metadata=self._metadata,
                timeout=timeout if timeout is not None else self._timeout)
        except grpc.aio.AioRpcError as exc:
            trailer = dict(exc.trailing_metadata() or ())
            code = exc.code()
            retry_after = trailer.get("retry-after")
            raise ML2PError(exc.details() or code.name,
                            code=trailer.get("error-code", "transport" if code in (
                                grpc.StatusCode.UNAVAILABLE,) and "error-code" not in trailer
                                else code.name.lower()),
                            status=code.name, field=trailer.get("error-field") or None,
                            retry_after=float(retry_after) if retry_after else None) from None

    async def tag(self, image: bytes, labels: list[str] | None, vocabulary: str | None,
                  options: dict, timeout: float | None, source: str | None) -> TagResult:
        reply = await self._call("Tag", pb.TagRequest(
            image=image, labels=labels or [], vocabulary=vocabulary or "",
            **{k: v for k, v in options.items() if v is not None}), timeout)
        return TagResult(tags=_tags(reply.tags),
                         model=f"{reply.model_name}@{reply.model_version}",
                         duplicates_removed=list(reply.duplicates_removed),
                         warnings=_warnings(reply.warnings), timings_ms=_timings(reply.timings_ms),
                         gflops=_timings(reply.gflops), source=source)

    async def embed(self, images: list[bytes], dtype: str, timeout: float | None) -> Embeddings:
        reply = await self._call("Embed", pb.EmbedRequest(images=images, dtype=dtype), timeout)
        model = reply.model
        return Embeddings(
            model=VectorsModel(name=model.name, version=model.version, precision=model.precision),
            items=[Embedding(shape=tuple(e.shape), dtype=e.dtype, data=e.data)
                   for e in reply.embeddings])

    async def score(self, embeddings: Embeddings, labels: list[str] | None,
                    vocabulary: str | None, options: dict, timeout: float | None
                    ) -> list[TagResult]:
        m = embeddings.model
        reply = await self._call("Score", pb.ScoreRequest(
            model=pb.VectorsModel(name=m.name, version=m.version, precision=m.precision),
            embeddings=[pb.Embedding(shape=list(e.shape), dtype=e.dtype, data=e.data)
                        for e in embeddings.items],
            labels=labels or [], vocabulary=vocabulary or "",
            **{k: v for k, v in options.items() if v is not None}), timeout)
        model = f"{reply.model_name}@{reply.model_version}"
        return [TagResult(tags=_tags(r.tags), model=model,
                          duplicates_removed=list(reply.duplicates_removed),
                          warnings=_warnings(reply.warnings), gflops=_timings(reply.gflops),
                          source=e.source)
                for r, e in zip(reply.results, embeddings.items, strict=True)]

    @staticmethod
    def _vocabulary(reply) -> Vocabulary:  # noqa: ANN001 - pb.Vocabulary
        return Vocabulary(name=reply.name, labels=list(reply.labels), builtin=reply.builtin,
                          created=reply.created,
                          duplicates_removed=list(reply.duplicates_removed))

    async def put_vocabulary(self, name: str, labels: list[str]) -> Vocabulary:
        return self._vocabulary(await self._call(
            "PutVocabulary", pb.PutVocabularyRequest(name=name, labels=labels)))

    async def get_vocabulary(self, name: str) -> Vocabulary:
        return self._vocabulary(await self._call("GetVocabulary",
                                                 pb.GetVocabularyRequest(name=name)))

    async def delete_vocabulary(self, name: str) -> None:
        await self._call("DeleteVocabulary", pb.DeleteVocabularyRequest(name=name))

    async def list_vocabularies(self) -> list[str]:
        raise ML2PError("listing vocabularies is REST only (GET /v1/vocabularies)",
                        code="unsupported")

    async def models(self) -> list[ModelInfo]:
        reply = await self._call("ListModels", pb.ListModelsRequest())
        return [ModelInfo(name=m.name, version=m.version, engine=m.engine, groups=m.groups,
                          dim=m.dim, calibrated=m.calibrated, state=m.state,
                          details=json.loads(m.manifest_json or "{}")) for m in reply.models]

    async def ready(self) -> bool:
        """The standard grpc.health.v1 check of the whole server (no stubs needed: the request
        is empty, the answer's field 1 is the status, 1 = SERVING)."""
        check = self._channel.unary_unary("/grpc.health.v1.Health/Check",
                                          request_serializer=bytes,
                                          response_deserializer=bytes)
        try:
            reply = await check(b"", timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return False
            raise ML2PError(exc.details() or exc.code().name, code=exc.code().name.lower(),
                            status=exc.code().name) from None
        return reply == b"\x08\x01"

    async def close(self) -> None:
        await self._channel.close()
