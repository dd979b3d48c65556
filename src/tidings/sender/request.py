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
    MAX_TTL,
    HeaderError,
    InvalidSubscription,
    PayloadTooLarge,
    Subscription,
    Urgency,
    VapidHeaders,
    aesgcm_encrypt,
    b64url_decode,
    encrypt_for_key,
    parse_topic,
)

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

CONTENT_TYPE = "application/octet-stream"
"""Sent with every encrypted body, as the npm web-push does (some services require it)."""
URGENCIES = tuple(urgency.value for urgency in Urgency)
"""RFC 8030's urgencies, lowest first (what `--urgency` and `urgency=` accept)."""

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


def _valid_topic(topic: object) -> bool:
    """RFC 8030 §5.4's rule as the service applies it, with no surrounding spaces either."""
    if not isinstance(topic, str) or topic != topic.strip(" \t"):
        return False
    try:
        parse_topic(topic)
    except HeaderError:
        return False
    return True


def check_options(ttl: int, urgency: str | None, topic: str | None, content_encoding: str) -> None:
    """Raise ValueError (with what to fix) for a TTL, Urgency, Topic or coding a service refuses."""
    if type(ttl) is not int or ttl < 0:
        raise ValueError(f"ttl must be a whole number of seconds >= 0, got {ttl!r}")
    if ttl > MAX_TTL:
        raise ValueError(f"ttl must be at most 2**31 seconds, got {ttl}")
    if urgency is not None and urgency not in URGENCIES:
        raise ValueError(f"urgency must be one of {', '.join(URGENCIES)}; got {urgency!r}")
    if topic is not None and not _valid_topic(topic):
        raise ValueError(
            "topic must be 1 to 32 characters of the base64url alphabet (A-Z a-z 0-9 - _); "
            f"got {topic!r}"
        )
    if content_encoding not in ("aes128gcm", "aesgcm"):
        raise ValueError(
            f"content_encoding must be 'aes128gcm' (RFC 8291) or 'aesgcm' (legacy); "
            f"got {content_encoding!r}"
        )


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
    headers: dict[str, str] = {"TTL": str(ttl)}
    if body:
        headers["Content-Type"] = CONTENT_TYPE
        headers.update(coding_headers)
    if vapid is not None:
        if coding_headers.get("Content-Encoding") == "aesgcm":
            # The pre-RFC 8292 form that aesgcm receivers (and the npm web-push) use.
            headers["Authorization"] = vapid.legacy_authorization
            dh = headers.get("Crypto-Key")
            headers["Crypto-Key"] = f"{dh};{vapid.crypto_key}" if dh else vapid.crypto_key
        else:
            headers["Authorization"] = vapid.authorization
    if urgency is not None:
        headers["Urgency"] = urgency
    if topic is not None:
        headers["Topic"] = topic
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
