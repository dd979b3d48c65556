"""The push subscription an application server stores: endpoint plus the UA's keys."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from tidings.webpush.b64 import b64url_decode, b64url_encode
from tidings.webpush.errors import InvalidSubscription
from tidings.webpush.keys import load_p256_public_key, load_public

__all__ = ["Subscription", "load_p256_public_key"]


_WHITESPACE = re.compile(r"\s")  # str.isspace's characters, found in one C-level scan
_VALID_ORIGINS: dict[str, None] = {}
"""Endpoint prefixes up to the path (`scheme://host:port`) seen in valid endpoints.

Whether an endpoint passes the checks below depends only on that prefix (scheme, host,
port: urlsplit ignores the path) and on the whole URL being free of whitespace, so an
endpoint whose prefix is here needs only the whitespace scan. A fan-out sends to a few
push services, so this stays small; it is bounded anyway.
"""
_MAX_VALID_ORIGINS = 1024


def _origin_prefix(endpoint: str) -> str | None:
    """`endpoint` up to its path's first "/", or None when that is not where urlsplit's
    network location ends (no path, or a "?" or "#" before it)."""
    cut = endpoint.find("/", endpoint.find("//") + 2)
    if cut < 0:
        return None
    prefix = endpoint[:cut]
    return None if "?" in prefix or "#" in prefix else prefix


def _check_endpoint(endpoint: object) -> str:
    """The endpoint if it is an absolute http(s) URL with a host."""
    if type(endpoint) is str:
        prefix = _origin_prefix(endpoint)
        if prefix in _VALID_ORIGINS and _WHITESPACE.search(endpoint) is None:
            return endpoint
        _check_endpoint_fully(endpoint)
        if prefix is not None and len(_VALID_ORIGINS) < _MAX_VALID_ORIGINS:
            _VALID_ORIGINS[prefix] = None
        return endpoint
    return _check_endpoint_fully(endpoint)


def _check_endpoint_fully(endpoint: object) -> str:
    """`_check_endpoint` without the shortcut: parse the URL and check every part."""
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidSubscription("subscription endpoint must be a non-empty URL string")
    try:
        parts = urlsplit(endpoint)
        _ = parts.port
    except ValueError:
        raise InvalidSubscription(f"subscription endpoint is not a URL: {endpoint!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidSubscription(
            f"subscription endpoint must be an http(s) URL with a host, got {endpoint!r}"
        )
    if _WHITESPACE.search(endpoint):
        raise InvalidSubscription("subscription endpoint must not contain whitespace")
    return endpoint


def _key_bytes(value: object, field: str) -> bytes:
    """Raw bytes of a keys.* field given as base64url text or bytes."""
    if isinstance(value, str):
        try:
            return b64url_decode(value.strip())
        except ValueError as exc:
            raise InvalidSubscription(f"subscription {field} is not base64url: {exc}") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidSubscription(f"subscription {field} is missing or not a string")


@dataclass(frozen=True)
class Subscription:
    """A push subscription: where to POST, and the keys to encrypt for (RFC 8291)."""

    endpoint: str
    p256dh: bytes
    auth: bytes
    expiration_time: int | float | None = None
    # The validated key object, kept so encryption does not decode the point again.
    _key: ec.EllipticCurvePublicKey | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._validate(decode_point=True)

    @classmethod
    def _point_checked_elsewhere(
        cls,
        endpoint: str,
        p256dh: bytes,
        auth: bytes,
        expiration_time: int | float | None = None,
    ) -> Subscription:
        """Checked in every field except the point's curve membership (its key object is
        decoded when first asked for), for a caller that decodes the point itself before
        anyone sees this object: `send_many`'s encryption workers, which would otherwise
        decode it a second time (7 µs a message in the event loop's process). The caller
        must replace it by the `Subscription(...)` error when the point is refused.
        """
        return cls._made(endpoint, p256dh, auth, expiration_time, decode_point=False)

    @classmethod
    def _made(
        cls,
        endpoint: str,
        p256dh: bytes,
        auth: bytes,
        expiration_time: int | float | None = None,
        *,
        decode_point: bool = True,
        endpoint_checked: bool = False,
    ) -> Subscription:
        """`Subscription(...)` with the same checks, its fields set in one step (a
        frozen dataclass's `__init__` sets each through `object.__setattr__`);
        `endpoint_checked`: the caller has just run `_check_endpoint` on it."""
        self = object.__new__(cls)
        self.__dict__.update(
            endpoint=endpoint,
            p256dh=p256dh,
            auth=auth,
            expiration_time=expiration_time,
            _key=None,
        )
        self._validate(decode_point=decode_point, check_endpoint=not endpoint_checked)
        return self

    def _validate(self, *, decode_point: bool, check_endpoint: bool = True) -> None:
        if check_endpoint:
            _check_endpoint(self.endpoint)
        if not isinstance(self.p256dh, bytes) or len(self.p256dh) != 65:
            raise InvalidSubscription("subscription keys.p256dh must be 65 bytes (uncompressed)")
        if decode_point:
            try:
                object.__setattr__(self, "_key", load_public(self.p256dh)[0])
            except ValueError:
                raise InvalidSubscription(
                    "subscription keys.p256dh is not a P-256 public key"
                ) from None
        if not isinstance(self.auth, bytes) or len(self.auth) != 16:
            raise InvalidSubscription("subscription keys.auth must be exactly 16 bytes")
        exp = self.expiration_time
        if exp is not None and (
            isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp)
        ):
            raise InvalidSubscription("subscription expirationTime must be null or a number")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> Subscription:
        """From `PushSubscription.toJSON()` / pywebpush's subscription_info, or its JSON text."""
        if isinstance(data, (str, bytes, bytearray)):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError):
                raise InvalidSubscription("subscription is not valid JSON") from None
        if not isinstance(data, Mapping):
            raise InvalidSubscription("subscription must be a JSON object")
        endpoint = _check_endpoint(data.get("endpoint"))
        keys = data.get("keys")
        if not isinstance(keys, Mapping):
            raise InvalidSubscription("subscription has no keys object (keys.p256dh, keys.auth)")
        p256dh = _key_bytes(keys.get("p256dh"), "keys.p256dh")
        auth = _key_bytes(keys.get("auth"), "keys.auth")
        if len(p256dh) != 65 or p256dh[0] != 4:
            raise InvalidSubscription(
                f"subscription keys.p256dh must be a 65-byte uncompressed P-256 point, "
                f"got {len(p256dh)} bytes"
            )
        if len(auth) != 16:
            raise InvalidSubscription(
                f"subscription keys.auth must be exactly 16 bytes, got {len(auth)}"
            )
        # The endpoint was checked above: once is enough.
        return cls._made(endpoint, p256dh, auth, data.get("expirationTime"), endpoint_checked=True)

    def to_json(self) -> dict[str, Any]:
        """The browser's toJSON() shape, keys in base64url without padding."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": self.expiration_time,
            "keys": {"p256dh": b64url_encode(self.p256dh), "auth": b64url_encode(self.auth)},
        }

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The user agent's P-256 public key object (decoded once, when validated)."""
        return self._key if self._key is not None else load_p256_public_key(self.p256dh)
