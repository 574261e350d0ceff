"""REST API (FastAPI): tagging, vocabularies, models, health and metrics.

`create_app(service)` serves a shared `TaggingService` (the combined server); `create_app()`
without one builds its own from the settings and owns its lifecycle (`uvicorn --factory`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.common import check_api_key
from service.api.middleware import RequestContext, error_response
from service.api.pages import add_pages
from service.api.schemas import (
    BatchJSONRequest,
    BatchTagResponse,
    EmbeddingOut,
    EmbedJSONRequest,
    EmbedParams,
    EmbedResponse,
    ErrorBody,
    Health,
    ModelInfo,
    ModelList,
    ScoreRequest,
    TagJSONRequest,
    TagParams,
    TagResponse,
    VocabularyIn,
    VocabularyList,
    VocabularyOut,
)
from service.api.vectors import read_vectors, vector_bytes
from service.errors import (
    InvalidImage,
    InvalidRequest,
    LabelError,
    ServiceError,
    UnsupportedMediaType,
)
from service.pipeline import TaggingService, TagOptions, build_service
from service.pipeline.vocabularies import NAME_PATTERN
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <ML2P_API_KEY>`")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        400: "corrupt or non-image bytes", 401: "missing or wrong API key",
        413: "body or image pixels over the limit", 415: "unsupported content type",
        422: "invalid request (labels, options)", 429: "queue full (see Retry-After)",
        503: "not ready or shutting down", 504: "deadline exceeded"}.items()}
_AUTH = {401: _ERRORS[401]}
_NOT_READY = {503: _ERRORS[503]}
_NOT_FOUND = {404: {"model": ErrorBody, "description": "no such vocabulary"}}
_BUILTIN = {409: {"model": ErrorBody, "description": "built-in vocabulary"}}
_TAG_ERRORS = {**_ERRORS, 404: {"model": ErrorBody, "description": "unknown vocabulary"}}
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large", 415: "unsupported_media_type"}
_FORM_OPTIONS = ("vocabulary", "top_k", "min_probability", "min_score", "threshold",
                 "timeout_ms", "explain", "explain_top_k", "explain_png")


# --- dependencies ------------------------------------------------------------------------
# (async so FastAPI does not hop to a worker thread for each of them)
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> TaggingService:
    return request.app.state.service


async def authorize(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    # the key's name goes to the request's state, where RequestContext logs and counts it
    request.state.api_key = check_api_key(settings,
                                          credentials.credentials if credentials else None)


Service = Annotated[TaggingService, Depends(get_service)]
VocabularyName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64,
                                     description="letters, digits, '.', '_', '-'")]


# --- request parsing ---------------------------------------------------------------------
def _field(loc: tuple) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _b64(data: str, field: str) -> bytes:
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"image is not valid base64: {exc}", field=field) from None


def _form_labels(values: list, arrays: list) -> list[str] | None:
    """The multipart rule: each `labels` field is one label, exactly as sent (text that looks
    like JSON included); or one `labels_json` field holds a JSON array of labels."""
    if values and arrays:
        raise InvalidRequest("send labels (one field per label) or labels_json (one JSON "
                             "array), not both", field="labels_json")
    if arrays:
        if len(arrays) > 1 or not isinstance(arrays[0], str):
            raise InvalidRequest("labels_json is one text field holding a JSON array",
                                 field="labels_json")
        try:
            parsed = json.loads(arrays[0])
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"labels_json is not JSON: {exc}", field="labels_json") \
                from None
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise InvalidRequest("labels_json must be a JSON array of strings",
                                 field="labels_json")
        return parsed
    if not values:
        return None
    if not all(isinstance(v, str) for v in values):
        raise InvalidRequest("labels must be text fields, not files", field="labels")
    return values


async def _read_form(request: Request, settings: Settings):  # noqa: ANN202 - FormData
    """The multipart form, its parser's caps reported as the limits they stand for (422)."""
    try:
        return await request.form(max_files=settings.max_images + 1,
                                  max_fields=settings.max_labels + 64)
    except StarletteHTTPException as exc:  # the parser's caps arrive as a bare 400
        detail = str(exc.detail)
        if detail.startswith("Too many files"):
            raise InvalidRequest(f"too many image parts: at most {settings.max_images} images "
                                 "per request", field="images") from None
        if detail.startswith("Too many fields"):
            raise LabelError(f"too many form fields: at most {settings.max_labels} labels per "
                             "request", field="labels") from None
        if detail.startswith("Field exceeded maximum size"):
            raise LabelError(f"a form field is over 1 MiB ({detail}); labels are at most "
                             f"{settings.max_labels} × {settings.max_label_chars} characters",
                             field="labels") from None
        raise


def _form_options(form, options: tuple[str, ...], also: tuple[str, ...] = ()) -> dict:  # noqa: ANN001
    """The non-empty option fields of a form; a field neither an image, an option nor in
    `also` is refused (nothing the caller sent is silently dropped)."""
    unknown = set(form) - {"image", "images", *options, *also}
    if unknown:
        raise InvalidRequest(f"unknown form field(s): {', '.join(sorted(unknown))}",
                             field=sorted(unknown)[0])
    return {k: form[k] for k in options if k in form and form[k] != ""}


def _tag_form(form) -> TagParams:  # noqa: ANN001
    raw = _form_options(form, _FORM_OPTIONS, also=("labels", "labels_json"))
    return TagParams(labels=_form_labels(form.getlist("labels"), form.getlist("labels_json")),
                     **raw)


def _embed_form(form) -> EmbedParams:  # noqa: ANN001
    return EmbedParams(**_form_options(form, ("dtype", "timeout_ms")))


async def _parse(request: Request, settings: Settings, batch: bool, json_model: type = None,
                 form_params=_tag_form) -> tuple[list[bytes], TagParams]:  # noqa: ANN001
    """JSON (base64 images) or multipart (image files) -> (image bytes, params): the JSON
    body itself (`json_model`, by default the tag request's) or `form_params(form)`."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        model = json_model or (BatchJSONRequest if batch else TagJSONRequest)
        try:
            body = model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        sources = body.images if batch else [body.image]  # type: ignore[union-attr]
        field = "images[{}]" if batch else "image"
        images = [_b64(s, field.format(i)) for i, s in enumerate(sources)]
        return images, body
    if media != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {media or 'missing'!r}: send multipart/form-data (image file + "
            "labels) or application/json (base64 image)")
    form = await _read_form(request, settings)
    files = form.getlist("images") + form.getlist("image")
    if not all(isinstance(f, UploadFile) for f in files):
        raise InvalidImage("image parts must be file uploads (curl -F image=@photo.jpg)",
                           field="image")
    if not files:
        raise InvalidRequest("no image: add a file part named `image`", field="image")
    if not batch and len(files) > 1:
        raise InvalidRequest("one image per request here; use /v1/tag/batch for several",
                             field="image")
    try:
        params = form_params(form)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    return [await f.read() for f in files], params  # type: ignore[union-attr]


def _tag_body_doc(model: type, batch: bool) -> dict:
    image = ({"images": {"type": "array", "items": {"type": "string", "format": "binary"}}}
             if batch else {"image": {"type": "string", "format": "binary"}})
    form = {
        "type": "object", "required": ["images" if batch else "image"],
        "properties": {
            **image,
            "labels": {"type": "array", "items": {"type": "string"},
                       "description": "one field per label, each exactly as sent"},
            "labels_json": {"type": "string",
                            "description": "instead of labels: one field holding a JSON "
                                           "array of labels"},
            "vocabulary": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1},
            "min_probability": {"type": "number", "minimum": 0, "maximum": 1},
            "min_score": {"type": "number"},
            "threshold": {"type": "number", "deprecated": True},
            "timeout_ms": {"type": "number", "exclusiveMinimum": 0},
            "explain": {"type": "boolean", "default": False},
            "explain_top_k": {"type": "integer", "minimum": 1, "default": 5},
            "explain_png": {"type": "boolean", "default": False},
        },
    }
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": model.model_json_schema()},
    }}}


def _embed_body_doc() -> dict:
    form = {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "dtype": {"type": "string", "enum": ["float16", "float32"]},
        "timeout_ms": {"type": "number", "exclusiveMinimum": 0}}}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": EmbedJSONRequest.model_json_schema()},
    }}}


def _timeout_s(params: TagParams | EmbedParams) -> float | None:
    return params.timeout_ms / 1000.0 if params.timeout_ms else None


def _options(params: TagParams) -> TagOptions:
    return TagOptions(top_k=params.top_k, min_probability=params.min_probability,
                      min_score=params.min_score, threshold=params.threshold,
                      timeout_s=_timeout_s(params), explain=params.explain,
                      explain_top_k=params.explain_top_k, explain_png=params.explain_png)


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


# --- app ---------------------------------------------------------------------------------
def create_app(service: TaggingService | None = None, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app over `service` (built from `settings` and owned when not given)."""
    owns = service is None
    if service is None:
        service = build_service(settings or Settings())
    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        if owns:
            await service.drain(settings.drain_timeout_s)
            await service.close()

    app = FastAPI(
        title="ML2P zero-shot image tagger",
        version="1",
        description="Rank any candidate labels for an image ((ML)²P-Encoder).",
        lifespan=lifespan,
        responses={422: {"model": ErrorBody, "description": "invalid request"}},
        docs_url=None, redoc_url=None,  # add_pages serves them without a CDN
    )
    app.state.settings = settings
    app.state.service = service
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes,
                       max_requests=settings.admitted_requests,
                       retry_after_s=settings.retry_after_s, metrics=service.metrics)
    if settings.cors_origins:
        # added last, so outermost: the 401 / 413 / 429 answers of the layers inside carry the
        # CORS headers too, and a browser script can read why it was refused
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    _install_error_handlers(app)
    _add_routes(app)
    add_pages(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        message = "; ".join(f"{_field(tuple(e['loc'])) or 'body'}: {e['msg']}" for e in errors)
        return error_response(InvalidRequest(message or "invalid request",
                                             field=_field(tuple(first["loc"]))))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error = ServiceError(str(exc.detail))
        error.code = _HTTP_CODES.get(exc.status_code, "http_error")
        error.http_status = exc.status_code
        response = error_response(error)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:  # Starlette names only the first route matching the path
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (one route per method here)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(request.url.path):
            methods |= route_methods
    return sorted(methods)


def _add_routes(app: FastAPI) -> None:
    auth = [Depends(authorize)]

    async def tag(request: Request, service: Service) -> Response:
        """Tag one image: multipart (`image` file + `labels`) or JSON (base64 `image`)."""
        images, params = await _parse(request, service.settings, batch=False)
        outcome = await service.tag(images, params.labels, params.vocabulary, _options(params))
        return _json(TagResponse.of(outcome, request.state.request_id))

    for path in ("/v1/tag", "/tag"):
        app.add_api_route(path, tag, methods=["POST"], dependencies=auth,
                          response_model=TagResponse, responses=_TAG_ERRORS, tags=["tagging"],
                          openapi_extra=_tag_body_doc(TagJSONRequest, batch=False),
                          name="tag" if path == "/v1/tag" else "tag_alias",
                          include_in_schema=path == "/v1/tag")

    @app.post("/v1/tag/batch", dependencies=auth, response_model=BatchTagResponse,
              responses=_TAG_ERRORS, tags=["tagging"],
              openapi_extra=_tag_body_doc(BatchJSONRequest, batch=True))
    async def tag_batch(request: Request, service: Service) -> Response:
        """Tag several images against one label list."""
        images, params = await _parse(request, service.settings, batch=True)
        outcome = await service.tag(images, params.labels, params.vocabulary, _options(params))
        return _json(BatchTagResponse.of(outcome, request.state.request_id))

    @app.post("/v1/embed", dependencies=auth, response_model=EmbedResponse,
              responses=_TAG_ERRORS, tags=["vectors"],
              openapi_extra=_embed_body_doc())
    async def embed(request: Request, service: Service) -> Response:
        """The images' G×D vectors, to keep and re-score later with `/v1/score` (any labels,
        no image work): multipart (`image` / `images` files) or JSON (base64 `images`)."""
        images, params = await _parse(request, service.settings, batch=True,
                                      json_model=EmbedJSONRequest, form_params=_embed_form)
        outcome = await service.embed(images, TagOptions(timeout_s=_timeout_s(params)))
        embeddings = []
        for i, (vectors, result) in enumerate(zip(outcome.vectors, outcome.results,
                                                  strict=True)):
            shape, data = vector_bytes(vectors, params.dtype)
            embeddings.append(EmbeddingOut(
                index=i, shape=shape, dtype=params.dtype,
                data=base64.b64encode(data).decode(), batch_size=result.batch_size,
                timings_ms=result.timings_ms))
        return _json(EmbedResponse(request_id=request.state.request_id,
                                   model=outcome.vectors_model, embeddings=embeddings,
                                   timings_ms=outcome.batch_timings(),
                                   gflops=outcome.gflops()))

    @app.post("/v1/score", dependencies=auth, response_model=BatchTagResponse,
              responses={**_TAG_ERRORS, 409: {"model": ErrorBody, "description":
                                              "vectors of another model, version or "
                                              "precision variant"}}, tags=["vectors"])
    async def score_vectors(body: ScoreRequest, request: Request, service: Service) -> Response:
        """Stored vectors (from `/v1/embed`) against labels or a vocabulary: the same ranked
        tags, probabilities and options as `/v1/tag` on the images they came from."""
        vectors = read_vectors([(e.shape, e.dtype, _b64(e.data, f"embeddings[{i}].data"))
                                for i, e in enumerate(body.embeddings)])
        outcome = await service.score(vectors, body.model, body.labels, body.vocabulary,
                                      _options(body))
        return _json(BatchTagResponse.of(outcome, request.state.request_id))

    def vocab_out(service: TaggingService, name: str, duplicates: list[str] = ()) -> dict:
        v = service.vocabularies.get(name)
        return VocabularyOut(name=v.name, size=len(v.labels), builtin=v.builtin,
                             created=v.created, labels=v.labels,
                             duplicates_removed=list(duplicates)).model_dump()

    @app.get("/v1/vocabularies", dependencies=auth, response_model=VocabularyList,
             responses=_AUTH, tags=["vocabularies"])
    async def list_vocabularies(service: Service) -> dict:
        return {"vocabularies": service.vocabularies.names()}

    @app.put("/v1/vocabularies/{name}", dependencies=auth, response_model=VocabularyOut,
             responses={**_ERRORS, 201: {"model": VocabularyOut, "description": "created"},
                        **_BUILTIN},
             tags=["vocabularies"])
    async def put_vocabulary(name: VocabularyName, body: VocabularyIn, service: Service,
                             response: Response) -> dict:
        """Create or replace a named label set; it is embedded once, in the background."""
        _, created, duplicates = await service.put_vocabulary(name, body.labels)
        response.status_code = 201 if created else 200
        return vocab_out(service, name, duplicates)

    @app.get("/v1/vocabularies/{name}", dependencies=auth, response_model=VocabularyOut,
             responses={**_AUTH, **_NOT_FOUND}, tags=["vocabularies"])
    async def get_vocabulary(name: VocabularyName, service: Service) -> dict:
        return vocab_out(service, name)

    @app.delete("/v1/vocabularies/{name}", dependencies=auth, status_code=204,
                responses={**_AUTH, **_NOT_FOUND, **_BUILTIN, **_NOT_READY},
                tags=["vocabularies"])
    async def delete_vocabulary(name: VocabularyName, service: Service) -> Response:
        service.delete_vocabulary(name)
        return Response(status_code=204)

    @app.get("/v1/models", dependencies=auth, response_model=ModelList, responses=_AUTH,
             tags=["models"])
    async def models(service: Service) -> ModelList:
        """The loaded model: name, version, engine, G, D, GFLOPs, accuracy."""
        return ModelList(models=[ModelInfo(**service.describe())])

    @app.get("/livez", response_model=Health, tags=["health"])
    async def livez() -> Health:
        """200 while the process is up."""
        return Health(status="alive")

    @app.get("/readyz", response_model=Health, tags=["health"],
             responses={503: {"model": ErrorBody, "description": "not ready"}})
    async def readyz(service: Service) -> Health:
        """200 once the model is loaded and warmed up; 503 before, while draining, on failure."""
        service.check_ready()  # raises Unavailable (503) with the reason
        return Health(status="ready")

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(service: Service) -> Response:
        """Prometheus text exposition."""
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)
