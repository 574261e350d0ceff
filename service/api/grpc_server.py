"""gRPC API (grpc.aio): `ml2p.v1.Tagger`, `grpc.health.v1` and server reflection.

Same `TaggingService` as REST. `ServiceError`s become status codes (INVALID_ARGUMENT,
UNAUTHENTICATED, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE, NOT_FOUND, ...) with the
REST error code and field in the trailing metadata (`error-code`, `error-field`; `retry-after`
in seconds when the queue is full).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from service import logs
from service.api.common import bearer_token, check_api_key, request_id
from service.api.vectors import DTYPES, read_vectors, vector_bytes
from service.errors import InvalidRequest, QueueFull, ServiceError
from service.pipeline import State, TaggingService, TagOptions, TagOutcome
from service.pipeline.explain import Relevance
from service.protos import load
from service.results import VectorsRef

pb, pb_grpc = load()
log = logging.getLogger("ml2p.grpc")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tagger"].full_name  # "ml2p.v1.Tagger"
STREAM_WINDOW = 64  # TagStream items in flight per stream (the rest wait: backpressure)


class Undecodable:
    """A request message that did not parse (corrupt wire format, a string that is not UTF-8).

    Handed to the servicer instead of the message so that it answers INVALID_ARGUMENT; grpc
    itself would answer UNKNOWN with the parser's exception text.
    """

    request_id = ""

    def __init__(self, message_type: str, problem: Exception) -> None:
        self.error = InvalidRequest(f"malformed {message_type} message: {problem}")


def _lenient(parse: Callable[[bytes], object], message_type: str) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(message_type, exc)
    return deserialize


class _HandlerRecorder:
    """Stands in for the server in the generated `add_TaggerServicer_to_server`."""

    handlers: dict

    def add_generic_rpc_handlers(self, handlers: tuple) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers = handlers


def _add_tagger(servicer: TaggerServicer, server: grpc.aio.Server) -> None:
    """Register `ml2p.v1.Tagger` with request parsing errors mapped to INVALID_ARGUMENT."""
    recorder = _HandlerRecorder()
    pb_grpc.add_TaggerServicer_to_server(servicer, recorder)
    handlers = {
        name: handler._replace(request_deserializer=_lenient(
            handler.request_deserializer, name))
        for name, handler in recorder.handlers.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _tags(tags: list) -> list[pb.Tag]:
    return [pb.Tag(label=x.label, score=x.score, rank=x.rank, probability=x.probability,
                   relevance=_relevance(x.relevance))
            for x in tags]


def _relevance(relevance: Relevance | None) -> pb.RelevanceMap | None:
    if relevance is None:
        return None
    return pb.RelevanceMap(rows=relevance.rows, cols=relevance.cols,
                           values=relevance.values.tolist(), evidence=relevance.evidence,
                           png=relevance.png or b"")


def _warnings(outcome: TagOutcome) -> list[pb.LabelWarning]:
    return [pb.LabelWarning(label=w.label, code=w.code, message=w.message)
            for w in outcome.warnings]


def tag_response(outcome: TagOutcome, rid: str) -> pb.TagResponse:
    result = outcome.results[0]
    return pb.TagResponse(
        request_id=rid, model_name=outcome.model.name, model_version=outcome.model.version,
        tags=_tags(result.tags), batch_size=result.batch_size,
        timings_ms=pb.Timings(**outcome.timings(0).model_dump()),
        gflops=pb.Gflops(**outcome.gflops().model_dump()),
        duplicates_removed=outcome.duplicates_removed, warnings=_warnings(outcome))


class TaggerServicer(pb_grpc.TaggerServicer):
    """`ml2p.v1.Tagger` over a TaggingService."""

    def __init__(self, service: TaggingService) -> None:
        self.service = service
        self.settings = service.settings
        self.metrics = service.metrics

    # --- plumbing --------------------------------------------------------------------------
    async def _begin(self, context: grpc.aio.ServicerContext,
                     given: str = "") -> tuple[str, str | None]:
        """Request id (message field, else `x-request-id` metadata, else new), echoed in the
        initial metadata; then the API-key check. Returns the id and the key's name."""
        metadata = {k: v for k, v in context.invocation_metadata() or ()}
        rid = request_id(given or metadata.get("x-request-id"))
        await context.send_initial_metadata((("x-request-id", rid),))
        return rid, check_api_key(self.settings, bearer_token(metadata.get("authorization")))

    async def _unary(self, method: str, context: grpc.aio.ServicerContext,
                     handler: Callable[[str], Awaitable], given_id: str = "",
                     request: object = None):
        """Run one unary RPC: request id, auth, status mapping, metrics and access log."""
        start, status, key = time.perf_counter(), "OK", None
        token = logs.request_id.set(None)
        try:
            rid, key = await self._begin(context, given_id)
            logs.request_id.set(rid)
            if isinstance(request, Undecodable):
                raise request.error
            return await handler(rid)
        except ServiceError as exc:
            status = exc.grpc_status
            await context.abort(grpc.StatusCode[exc.grpc_status], exc.message,
                                trailing_metadata=_error_metadata(exc))
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception:
            status = "INTERNAL"
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        finally:
            self._record(method, status, start, key)
            logs.request_id.reset(token)

    def _record(self, method: str, status: str, start: float, key: str | None = None) -> None:
        """Metrics and the access log of one RPC (or stream item); `key`: the API key's name."""
        took = time.perf_counter() - start
        self.metrics.request_duration.labels("grpc", method, status).observe(took)
        if key is not None:
            self.metrics.key_requests.labels("grpc", key).inc()
        log.info("request", extra={"protocol": "grpc", "method": method, "status": status,
                                   "duration_ms": round(took * 1000, 3),
                                   **({"key": key} if key is not None else {})})

    def _options(self, request, context: grpc.aio.ServicerContext) -> TagOptions:  # noqa: ANN001
        """A request's options, from the fields its message has (Score has no deprecated
        threshold, Embed only the deadline)."""
        def given(name: str) -> float | int | None:
            fields = request.DESCRIPTOR.fields_by_name
            return getattr(request, name) if name in fields and request.HasField(name) else None

        def flag(name: str) -> bool:  # proto3 plain scalars: unset reads as false / 0
            return name in request.DESCRIPTOR.fields_by_name and bool(getattr(request, name))

        remaining = context.time_remaining()
        return TagOptions(
            top_k=given("top_k"), min_probability=given("min_probability"),
            min_score=given("min_score"), threshold=given("threshold"),
            timeout_s=remaining if remaining is not None and remaining > 0 else None,
            explain=flag("explain"), explain_png=flag("explain_png"),
            explain_top_k=(request.explain_top_k if flag("explain_top_k")
                           else TagOptions.explain_top_k))

    async def _tag(self, request: pb.TagRequest, rid: str,
                   context: grpc.aio.ServicerContext) -> pb.TagResponse:
        outcome = await self.service.tag(
            [request.image], list(request.labels) or None, request.vocabulary or None,
            self._options(request, context))
        return tag_response(outcome, rid)

    # --- RPCs ------------------------------------------------------------------------------
    async def Tag(self, request, context):  # noqa: N802 - generated names
        return await self._unary("Tag", context, lambda rid: self._tag(request, rid, context),
                                 given_id=request.request_id, request=request)

    async def TagStream(self, request_iterator, context) -> AsyncIterator:  # noqa: N802
        start, status, key = time.perf_counter(), "OK", None
        try:
            _, key = await self._begin(context)
            self.service.check_ready()
        except ServiceError as exc:
            self._record("TagStream", exc.grpc_status, start)
            await context.abort(grpc.StatusCode[exc.grpc_status], exc.message,
                                trailing_metadata=_error_metadata(exc))
        pending: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)

        async def item(request: pb.TagRequest) -> pb.TagResponse:
            rid, item_start, item_status = request_id(request.request_id), time.perf_counter(), "OK"
            try:
                if isinstance(request, Undecodable):
                    raise request.error
                return await self._tag(request, rid, context)
            except ServiceError as exc:
                item_status = exc.grpc_status
                return pb.TagResponse(request_id=rid, error=pb.Error(
                    code=exc.code, message=exc.message, field=exc.field or "",
                    status=exc.grpc_status))
            finally:
                self._record("TagStream.item", item_status, item_start)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(item(request)))
            except Exception:  # a broken request stream still ends the response loop
                await pending.put(None)
                raise
            await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surfaces a reader error
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            self._record("TagStream", status, start, key)

    async def Embed(self, request, context):  # noqa: N802
        async def handler(rid: str) -> pb.EmbedResponse:
            dtype = request.dtype or "float16"
            if dtype not in DTYPES:
                raise InvalidRequest(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}",
                                     field="dtype")
            outcome = await self.service.embed(list(request.images),
                                               self._options(request, context))
            ref = outcome.vectors_model
            embeddings = []
            for vectors in outcome.vectors:
                shape, data = vector_bytes(vectors, dtype)
                embeddings.append(pb.Embedding(shape=shape, dtype=dtype, data=data))
            return pb.EmbedResponse(
                request_id=rid, model=pb.VectorsModel(name=ref.name, version=ref.version,
                                                      precision=ref.precision),
                embeddings=embeddings,
                timings_ms=pb.Timings(**outcome.timings(0).model_dump()),
                gflops=pb.Gflops(**outcome.gflops().model_dump()))
        return await self._unary("Embed", context, handler, given_id=request.request_id,
                                 request=request)

    async def Score(self, request, context):  # noqa: N802
        async def handler(rid: str) -> pb.ScoreResponse:
            vectors = read_vectors([(list(e.shape), e.dtype, e.data)
                                    for e in request.embeddings])
            model = VectorsRef(name=request.model.name, version=request.model.version,
                               precision=request.model.precision)
            outcome = await self.service.score(
                vectors, model, list(request.labels) or None, request.vocabulary or None,
                self._options(request, context))
            return pb.ScoreResponse(
                request_id=rid, model_name=outcome.model.name,
                model_version=outcome.model.version,
                results=[pb.ScoredImage(index=i, tags=_tags(r.tags))
                         for i, r in enumerate(outcome.results)],
                gflops=pb.Gflops(**outcome.gflops().model_dump()),
                duplicates_removed=outcome.duplicates_removed, warnings=_warnings(outcome))
        return await self._unary("Score", context, handler, given_id=request.request_id,
                                 request=request)

    async def ListModels(self, request, context):  # noqa: N802
        async def handler(rid: str) -> pb.ListModelsResponse:
            d = self.service.describe()
            return pb.ListModelsResponse(models=[pb.ModelInfo(
                name=d["name"], version=d["version"], engine=d["engine"], groups=d["groups"],
                dim=d["dim"], input_size=d["input_size"], gflops_image=d["gflops"]["image"],
                gflops_label=d["gflops"]["label"], calibrated=d["calibrated"],
                state=d["state"], manifest_json=json.dumps(d, default=str))])
        return await self._unary("ListModels", context, handler, request=request)

    def _vocabulary(self, name: str, created_now: bool = False,
                    duplicates: list[str] = ()) -> pb.Vocabulary:
        v = self.service.vocabularies.get(name)
        return pb.Vocabulary(name=v.name, labels=v.labels, builtin=v.builtin, created=v.created,
                             created_now=created_now, duplicates_removed=list(duplicates))

    async def PutVocabulary(self, request, context):  # noqa: N802
        async def handler(rid: str) -> pb.Vocabulary:
            _, created, dups = await self.service.put_vocabulary(request.name,
                                                                 list(request.labels))
            return self._vocabulary(request.name, created, dups)
        return await self._unary("PutVocabulary", context, handler, request=request)

    async def GetVocabulary(self, request, context):  # noqa: N802
        async def handler(rid: str) -> pb.Vocabulary:
            return self._vocabulary(request.name)
        return await self._unary("GetVocabulary", context, handler, request=request)

    async def DeleteVocabulary(self, request, context):  # noqa: N802
        async def handler(rid: str) -> pb.DeleteVocabularyResponse:
            self.service.delete_vocabulary(request.name)
            return pb.DeleteVocabularyResponse()
        return await self._unary("DeleteVocabulary", context, handler, request=request)


def _error_metadata(exc: ServiceError) -> tuple:
    pairs = [("error-code", exc.code)]
    if exc.field:
        pairs.append(("error-field", exc.field))
    if isinstance(exc, QueueFull):  # REST's Retry-After, in seconds
        pairs.append(("retry-after", str(exc.retry_after_s)))
    return tuple(pairs)


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(service: TaggingService, host: str, port: int) -> GrpcServer:
    """Bind, register Tagger + health + reflection, start; health follows the service state."""
    settings = service.settings
    # calls beyond the limit are refused (RESOURCE_EXHAUSTED) before their message is read
    server = grpc.aio.server(maximum_concurrent_rpcs=settings.admitted_requests, options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ])
    _add_tagger(TaggerServicer(service), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    credentials = settings.grpc_credentials()
    bound = (server.add_secure_port(f"{host}:{port}", credentials) if credentials is not None
             else server.add_insecure_port(f"{host}:{port}"))
    if bound == 0:
        raise OSError(f"gRPC: cannot bind {host}:{port}")
    await server.start()
    loop = asyncio.get_running_loop()

    def follow(state: State) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if state is State.READY
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            loop.create_task(health.set(name, status))

    service.add_listener(follow)
    return GrpcServer(server, bound, health)
