"""ASGI middleware: request id, admission and body-size limit (both before the body is read),
request metrics and the access log."""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs
from service.api.common import request_id
from service.errors import BodyTooLarge, QueueFull, ServiceError, Unauthenticated
from service.metrics import Metrics

log = logging.getLogger("ml2p.http")
_QUIET = {"/livez", "/readyz", "/metrics"}  # logged at debug level only
_WITH_BODY = {"POST", "PUT", "PATCH"}  # admitted against the concurrency limit


def error_response(exc: ServiceError) -> JSONResponse:
    """The one error body, with Retry-After / WWW-Authenticate where they apply."""
    headers = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


class RequestContext:
    """Per request: X-Request-ID (taken or generated, echoed), admission (at most
    `max_requests` requests with a body at once, 429 beyond) and max body size (413), both
    decided from the headers before any of the body is read (the ASGI server discards an
    unread body), `ml2p_request_duration_seconds{protocol="rest"}`, one JSON access-log line,
    and a last-resort 500 in the error schema."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_requests: int,
                 retry_after_s: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_requests = max_requests
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._admitted = 0  # requests with a body being received or processed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        rid = request_id(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid
        token = logs.request_id.set(rid)
        status, started, received = 500, False, 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise self._too_large()
            return message

        admitted = False  # counted against max_requests
        try:
            length = headers.get("content-length")
            has_body = scope["method"] in _WITH_BODY
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await error_response(self._too_large())(scope, receive, send_with_id)
            elif has_body and self._admitted >= self.max_requests:
                await error_response(self._at_capacity())(scope, receive, send_with_id)
            else:
                admitted = has_body
                self._admitted += admitted
                await self.app(scope, counted_receive, send_with_id)
        except Exception:  # noqa: BLE001 - never leak a traceback or a non-schema body
            log.exception("unhandled error")
            if not started:
                response = error_response(ServiceError("internal server error"))
                await response(scope, receive, send_with_id)
        finally:
            self._admitted -= admitted
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            took = time.perf_counter() - start
            self.metrics.request_duration.labels("rest", endpoint, str(status)).observe(took)
            key = scope["state"].get("api_key")  # the key's name, set by the auth dependency
            if key is not None:
                self.metrics.key_requests.labels("rest", key).inc()
            log.log(logging.DEBUG if scope["path"] in _QUIET else logging.INFO, "request",
                    extra={"protocol": "rest", "method": scope["method"], "path": scope["path"],
                           "status": status, "duration_ms": round(took * 1000, 3),
                           **({"key": key} if key is not None else {})})
            logs.request_id.reset(token)

    def _at_capacity(self) -> QueueFull:
        return QueueFull(f"server at capacity ({self._admitted} requests being received or "
                         f"processed, limit {self.max_requests}); retry after "
                         f"{self.retry_after_s}s", retry_after_s=self.retry_after_s)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
