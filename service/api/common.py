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


def check_api_key(settings: Settings, token: str | None) -> str | None:
    """The name of the key `token` is (None when no key is configured); Unauthenticated when
    it is none of them. Every key is compared, in constant time, so the time taken does not
    tell which key (or how much of one) matched."""
    keys = settings.api_keys
    if not keys:
        return None
    given = (token or "").encode()
    matched = None
    for name, key in keys.items():
        if hmac.compare_digest(given, key):
            matched = name
    if matched is None:
        raise Unauthenticated("missing or wrong API key: send `Authorization: Bearer <key>`")
    return matched


def bearer_token(header: str | None) -> str | None:
    """`Bearer <token>` -> token (scheme case-insensitive); anything else -> None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
