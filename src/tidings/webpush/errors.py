"""The errors of Web Push: the exceptions of `tidings.webpush`, and the JSON error body.

The exceptions: one base class, one subclass per kind of failure. The error body is
what a push service answers a refused request with, `{"code", "errno", "error",
"message"}` (Mozilla autopush's form, which Tidings follows): `code` is the HTTP
status, `errno` a number that never changes meaning (clients may switch on it, see
`Errno`), `error` the status phrase and `message` what to fix. The service writes it
with `error_body`; the sender and the user agent read it with `parse_error_body`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from http import HTTPStatus

__all__ = [
    "DecryptionError",
    "EncryptionError",
    "HeaderError",
    "InvalidKeyError",
    "InvalidSubscription",
    "PayloadTooLarge",
    "VapidError",
    "WebPushError",
]
__all__ += ["Errno", "ErrorBody", "errno_of", "error_body", "parse_error_body"]  # the body


class WebPushError(Exception):
    """Base of every error raised by `tidings.webpush`, so callers can catch one name."""


class DecryptionError(WebPushError):
    """A body that is malformed or cannot be decrypted (aes128gcm, RFC 8291 or aesgcm)."""


class EncryptionError(WebPushError, ValueError):
    """Encryption refused because of its arguments (sizes, record size, padding)."""


class PayloadTooLarge(EncryptionError):
    """The plaintext (plus padding) does not fit in one push message body."""


class InvalidKeyError(WebPushError, ValueError):
    """A key argument that is not a P-256 point, not 16 bytes, bad base64url or bad PEM."""


class VapidError(WebPushError):
    """A VAPID (RFC 8292) token or header that does not verify; `.reason` says why.

    `.unreadable` is True when no token and key could even be read from the headers
    (an unknown scheme, a missing token, key or `Crypto-Key`), as opposed to a token
    that was read and found invalid (not a JWT, signature, claims, key).
    """

    def __init__(self, reason: str, *, unreadable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreadable = unreadable


class HeaderError(WebPushError, ValueError):
    """An invalid RFC 8030 request header; `.header` names it (e.g. "TTL")."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(f"{header}: {message}")
        self.header = header
        self.message = message


class InvalidSubscription(WebPushError, ValueError):
    """A push subscription (endpoint plus keys) that cannot be used."""


class Errno(IntEnum):
    """Tidings' stable error numbers (docs/protocol-errors.md); never renumber, only add."""

    INVALID_TOKEN = 102  # endpoint or message token does not open
    SUBSCRIPTION_GONE = 103  # subscription was unregistered or expired
    BAD_TTL = 111
    BAD_URGENCY = 112
    BAD_TOPIC = 113
    BAD_ENCODING = 110  # missing/unknown Content-Encoding or missing Encryption/Crypto-Key
    BAD_BODY = 114  # body not a well-formed aes128gcm/aesgcm payload
    BODY_TOO_LARGE = 104
    VAPID_MISSING = 109  # restricted subscription without Authorization, or one unreadable
    VAPID_INVALID = 108  # bad signature, claims, audience, expiry
    VAPID_KEY_MISMATCH = 107  # signed with a key other than the subscription's
    MALFORMED_REQUEST = 400  # not parseable as HTTP, or a bad WebSocket handshake
    NOT_FOUND = 404
    UPGRADE_REQUIRED = 426  # a plain GET of the WebSocket endpoint
    METHOD_NOT_ALLOWED = 405
    BAD_RECEIPT = 115  # Link names no receipt subscription of this service
    BAD_SET = 116  # Link names no subscription set of this service
    NEEDS_HTTP2 = 117  # monitoring needs HTTP/2 server push
    CRYPTO_HEADER_TOO_LONG = 118  # aesgcm Encryption or Crypto-Key over MAX_CRYPTO_HEADER
    TOO_MANY_MESSAGES = 120  # the subscription or the user agent has too many stored messages
    RATE_LIMITED = 121
    ACCESS_DENIED = 130  # /dashboard, /api/stats or /metrics without the right token
    TOO_MANY_SUBSCRIPTIONS = 122
    TOO_MANY_MONITORS = 123  # the user agent (or receipt subscription) has its maximum open
    TOO_MANY_BYTES = 125  # the user agent's stored messages take too many bytes
    STORE_FULL = 126  # 507: the whole store holds its maximum of messages
    TOO_MANY_BROADCASTS = 131  # the service keeps its maximum number of broadcasts
    BROADCASTS_READ_ONLY = 132  # broadcasts come from Megaphone (--megaphone-url)
    UNAVAILABLE = 503  # the store cannot take writes right now
    INTERNAL = 999


def error_body(status: int, errno: int, message: str, *, error: str | None = None) -> bytes:
    """The JSON error body; `error` defaults to the status phrase (RFC 9110)."""
    return json.dumps(
        {
            "code": status,
            "errno": int(errno),
            "error": HTTPStatus(status).phrase if error is None else error,
            "message": message,
        }
    ).encode()


MAX_ERROR_BODY = 65536
"""Longer answers are not read as an error body (a page, not a JSON document)."""


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The JSON error body a push service sends with a 4xx/5xx (`code`, `errno`, ...)."""

    code: int | None
    errno: int | None
    error: str | None
    message: str | None

    def __str__(self) -> str:
        parts = [p for p in (self.error, self.message) if p]
        text = ": ".join(parts) if parts else "no reason given"
        return f"{text} (errno {self.errno})" if self.errno is not None else text


def parse_error_body(body: bytes, content_type: str | None = None) -> ErrorBody | None:
    """Read `{"code","errno","error","message"}` (Mozilla/Tidings style) when present.

    Also the `{"reason": ...}` and `{"error": {"message": ...}}` forms other services
    send; None when the body is none of these.
    """
    if not body or len(body) > MAX_ERROR_BODY:
        return None
    stripped = body.lstrip()
    if not stripped.startswith(b"{"):
        return None
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, Mapping):
        return None

    def _int(name: str) -> int | None:
        item = value.get(name)
        return item if type(item) is int else None

    def _str(name: str) -> str | None:
        item = value.get(name)
        return item if isinstance(item, str) else None

    error = _str("error")
    message = _str("message") or _str("reason")
    if isinstance(value.get("error"), Mapping):  # {"error": {"message": ...}} (web-push-testing)
        inner = value["error"]
        message = message or (
            inner.get("message") if isinstance(inner.get("message"), str) else None
        )
        error = None
    if error is None and message is None and _int("errno") is None:
        return None
    return ErrorBody(code=_int("code"), errno=_int("errno"), error=error, message=message)


def errno_of(body: bytes) -> int | None:
    """The `errno` of a JSON error body, if it has one."""
    parsed = parse_error_body(body)
    return parsed.errno if parsed is not None else None
