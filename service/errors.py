"""The service's error vocabulary: one exception type per failure, mapped once to HTTP and gRPC.

Every layer raises these; the REST layer renders `{"error": {"code", "message", "field"?}}`
with `http_status`, the gRPC layer aborts with `grpc_status` (a `grpc.StatusCode` name, so
this module does not import grpc).
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: a stable machine-readable `code`, a human `message`, an optional `field`."""

    code = "internal"
    http_status = 500
    grpc_status = "INTERNAL"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body: dict = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidRequest(ServiceError):
    code, http_status, grpc_status = "invalid_request", 422, "INVALID_ARGUMENT"


class LabelError(InvalidRequest):
    code = "invalid_labels"


class LabelTooLong(LabelError):
    """A label tokenises to more tokens than the text graph takes (never truncated)."""

    code = "label_too_long"

    def __init__(self, message: str, index: int, field: str = "labels") -> None:
        super().__init__(message, field=f"{field}[{index}]")
        self.index = index


class ExplainUnavailable(InvalidRequest):
    """`explain` asked of a model served without its relevance-map graph."""

    code = "explain_unavailable"


class InvalidImage(ServiceError):
    code, http_status, grpc_status = "invalid_image", 400, "INVALID_ARGUMENT"


class ImageTooLarge(ServiceError):
    code, http_status, grpc_status = "image_too_large", 413, "INVALID_ARGUMENT"


class BodyTooLarge(ServiceError):
    code, http_status, grpc_status = "body_too_large", 413, "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(ServiceError):
    code, http_status, grpc_status = "unsupported_media_type", 415, "INVALID_ARGUMENT"


class Unauthenticated(ServiceError):
    code, http_status, grpc_status = "unauthenticated", 401, "UNAUTHENTICATED"


class NotFound(ServiceError):
    code, http_status, grpc_status = "not_found", 404, "NOT_FOUND"


class Conflict(ServiceError):
    code, http_status, grpc_status = "conflict", 409, "FAILED_PRECONDITION"


class VectorsMismatch(Conflict):
    """Stored vectors of another model, version or precision variant."""

    code = "vectors_mismatch"


class QueueFull(ServiceError):
    code, http_status, grpc_status = "queue_full", 429, "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServiceError):
    code, http_status, grpc_status = "deadline_exceeded", 504, "DEADLINE_EXCEEDED"


class Unavailable(ServiceError):
    code, http_status, grpc_status = "unavailable", 503, "UNAVAILABLE"
