"""The exceptions of `tidings.webpush`: one base class, one subclass per kind of failure."""

from __future__ import annotations

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
