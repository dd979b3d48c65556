"""Building the push request for one subscription, without I/O: encrypt, sign, headers.

Everything here is a plain function of its arguments, so `--dry-run`, the fan-out worker
processes and the tests all build exactly the bytes that `Sender` sends.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from tidings.webpush import (
    MAX_PLAINTEXT,
    InvalidSubscription,
    PayloadTooLarge,
    Subscription,
    VapidHeaders,
    aesgcm_encrypt,
    b64url_decode,
    encrypt_for_key,
)
from tidings.webpush.headers import URGENCIES
from tidings.webpush.request import CONTENT_TYPE, check_options, push_headers

__all__ = [
    "CONTENT_TYPE",
    "URGENCIES",
    "ContentEncoding",
    "Payload",
    "PayloadSource",
    "PushRequest",
    "SubscriptionLike",
    "build_request",
    "check_options",
    "encode_payload",
    "to_subscription",
]


ContentEncoding: TypeAlias = Literal["aes128gcm", "aesgcm"]
Payload: TypeAlias = bytes | bytearray | memoryview | str | None
SubscriptionLike: TypeAlias = Subscription | Mapping[str, Any] | str | bytes
PayloadSource: TypeAlias = Payload | Callable[[Subscription], Payload]


@dataclass(slots=True)
class PushRequest:
    """One HTTP request to a push resource: what `Sender` sends and `--dry-run` prints."""

    url: str
    headers: dict[str, str]
    body: bytes = b""
    method: str = "POST"
    subscription: Subscription | None = field(default=None, repr=False)

    def header_lines(self) -> list[str]:
        """`Name: value` lines, Content-Length included, as they go on the wire."""
        lines = [f"{name}: {value}" for name, value in self.headers.items()]
        lines.append(f"Content-Length: {len(self.body)}")
        return lines

    def to_curl(self, body_path: str | None = None) -> str:
        """A `curl` command line that replays this request (body read from `body_path`)."""
        parts = ["curl", "-sS", "-i", "-X", self.method]
        for name, value in self.headers.items():
            parts += ["-H", f"{name}: {value}"]
        if self.body:
            parts += ["--data-binary", f"@{body_path or 'body.bin'}"]
        else:
            parts += ["-H", "Content-Length: 0"]
        parts.append(self.url)
        return shlex.join(parts)


def to_subscription(value: SubscriptionLike) -> Subscription:
    """A `Subscription` from the model itself, a `toJSON()` dict, or its JSON text."""
    return _to_subscription(value, Subscription._made)


def to_subscription_for_worker(value: SubscriptionLike) -> Subscription:
    """`to_subscription` leaving a dict's point to be checked by the encryption worker that
    decodes it anyway (see `Subscription._point_checked_elsewhere`)."""
    return _to_subscription(value, Subscription._point_checked_elsewhere)


def _to_subscription(value: SubscriptionLike, make: Callable[..., Subscription]) -> Subscription:
    if isinstance(value, Subscription):
        return value
    if type(value) is dict:
        # Fast path for the common, well-formed dict (validated once, by the model);
        # anything unusual goes through from_json for its precise error message.
        try:
            keys = value["keys"]
            return make(
                value["endpoint"],
                b64url_decode(keys["p256dh"]),
                b64url_decode(keys["auth"]),
                value.get("expirationTime"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
    if isinstance(value, (Mapping, str, bytes, bytearray)):
        return Subscription.from_json(value)
    raise InvalidSubscription(
        f"subscription must be a Subscription, a toJSON() dict or JSON text, "
        f"not {type(value).__name__}"
    )


def encode_payload(data: Payload) -> bytes:
    """The plaintext as bytes (str as UTF-8), refused when over the 3993-byte limit."""
    if data is None:
        return b""
    if isinstance(data, str):
        raw = data.encode("utf-8")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise TypeError(
            f"push data must be bytes or str (or None for no payload), not {type(data).__name__}"
            + (
                "; serialise it first, e.g. json.dumps(data)"
                if isinstance(data, (dict, list))
                else ""
            )
        )
    if len(raw) > MAX_PLAINTEXT:
        raise PayloadTooLarge(
            f"push message payload is {len(raw)} bytes; at most {MAX_PLAINTEXT} bytes fit in a "
            "4096-byte push body (RFC 8291). Send a smaller message, e.g. an id the page fetches."
        )
    return raw


def encrypt_for(
    subscription: Subscription, plaintext: bytes, content_encoding: str
) -> tuple[bytes, dict[str, str]]:
    """The encrypted body and its coding headers (without VAPID) for one subscription."""
    if content_encoding == "aes128gcm":
        body = encrypt_for_key(
            plaintext, subscription.public_key, subscription.p256dh, subscription.auth
        )
        return body, {"Content-Encoding": "aes128gcm"}
    message = aesgcm_encrypt(plaintext, subscription.p256dh, subscription.auth)
    return message.body, dict(message.headers)


def assemble(
    subscription: Subscription,
    body: bytes,
    coding_headers: Mapping[str, str],
    *,
    ttl: int,
    urgency: str | None,
    topic: str | None,
    vapid: VapidHeaders | None,
    extra_headers: Mapping[str, str] | None = None,
) -> PushRequest:
    """Put an (already encrypted) body and its headers together into a PushRequest."""
    headers = push_headers(
        ttl=ttl,
        has_body=bool(body),
        coding_headers=coding_headers,
        vapid=vapid,
        urgency=urgency,
        topic=topic,
    )
    if extra_headers:
        headers.update(extra_headers)
    return PushRequest(
        url=subscription.endpoint, headers=headers, body=body, subscription=subscription
    )


def build_request(
    subscription: SubscriptionLike,
    data: Payload,
    *,
    ttl: int,
    urgency: str | None = None,
    topic: str | None = None,
    content_encoding: str = "aes128gcm",
    vapid: VapidHeaders | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> PushRequest:
    """Encrypt `data` for `subscription` and build the signed push request (no I/O)."""
    check_options(ttl, urgency, topic, content_encoding)
    sub = to_subscription(subscription)
    plaintext = encode_payload(data)
    body, coding = encrypt_for(sub, plaintext, content_encoding) if plaintext else (b"", {})
    return assemble(
        sub,
        body,
        coding,
        ttl=ttl,
        urgency=urgency,
        topic=topic,
        vapid=vapid,
        extra_headers=extra_headers,
    )


def json_payload(value: Any) -> bytes:
    """Compact JSON for a payload given as a Python value."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_body(request: PushRequest, path: str | os.PathLike[str]) -> None:
    """Write the request body to `path` (for `curl --data-binary @path`)."""
    with open(path, "wb") as handle:
        handle.write(request.body)
