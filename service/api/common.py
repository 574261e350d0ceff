"""Pieces REST and gRPC share: API-key check and request ids."""

from __future__ import annotations

import hmac
import re
import uuid

from service.errors import Unauthenticated
from service.settings import Settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id(given: str | None) -> str:
    """The caller's request id if it is sane (<=128 safe characters), else a fresh one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def check_api_key(settings: Settings, token: str | None) -> None:
    """Raise Unauthenticated unless no key is configured or `token` matches (constant time)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if token is None or not hmac.compare_digest(token.encode(), expected):
        raise Unauthenticated("missing or wrong API key: send `Authorization: Bearer <key>`")


def bearer_token(header: str | None) -> str | None:
    """`Bearer <token>` -> token (scheme case-insensitive); anything else -> None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
