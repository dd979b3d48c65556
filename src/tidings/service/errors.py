"""Errors the service answers with: an RFC status code and a stable JSON body.

Every rejected request gets `{"code", "errno", "error", "message"}` (see DESIGN.md):
`code` is the HTTP status, `errno` a number that never changes meaning (clients may
switch on it), `error` the status phrase and `message` what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from http import HTTPStatus


class Errno(IntEnum):
    """Stable error numbers; never renumber, only add."""

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
    TOO_MANY_BYTES = 125  # the user agent's stored messages take too many bytes
    STORE_FULL = 126  # 507: the whole store holds its maximum of messages
    TOO_MANY_BROADCASTS = 131  # the service keeps its maximum number of broadcasts
    BROADCASTS_READ_ONLY = 132  # broadcasts come from Megaphone (--megaphone-url)
    UNAVAILABLE = 503  # the store cannot take writes right now
    INTERNAL = 999


@dataclass
class ServiceError(Exception):
    """A request the service refuses; rendered as the JSON error body."""

    status: int
    errno: Errno
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    def body(self) -> bytes:
        """The JSON error document for this error."""
        return json.dumps(
            {
                "code": self.status,
                "errno": int(self.errno),
                "error": HTTPStatus(self.status).phrase,
                "message": self.message,
            }
        ).encode()
