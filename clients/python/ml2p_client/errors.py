"""One error type for both protocols: what the server said, and whether to try again."""

from __future__ import annotations


class ML2PError(Exception):
    """A request the service refused or could not answer.

    `code`: the service's stable error code (e.g. `invalid_labels`, `queue_full`,
    `vectors_mismatch`), or `transport` when no answer came; `status`: the HTTP status or the
    gRPC status name; `field`: the request field at fault, if any; `retry_after`: seconds
    the server asked to wait (429 / RESOURCE_EXHAUSTED), if it said.
    """

    def __init__(self, message: str, *, code: str = "error", status: int | str | None = None,
                 field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status
        self.field, self.retry_after = field, retry_after

    @property
    def retryable(self) -> bool:
        """Worth another try: the server was busy or not ready, or the connection failed."""
        return self.code == "transport" or self.status in (
            429, 502, 503, "RESOURCE_EXHAUSTED", "UNAVAILABLE")

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status or self.code}: {self.message}{where}"
