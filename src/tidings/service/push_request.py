"""Checking an application server's push request, without I/O.

Turns the request's headers and body into the facts the service acts on (TTL,
urgency, topic, how the user agent decrypts it) or a `ServiceError` with the RFC
status: 400 for bad TTL/Urgency/Topic/encoding, 413 for a body too large.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tidings.service.errors import Errno, ServiceError
from tidings.webpush import HeaderError, Urgency, parse_topic, parse_ttl, parse_urgency

_AES128GCM_HEADER = 21  # salt (16) + record size (4) + key id length (1)
_MIN_RECORD = 18  # RFC 8188: a record holds at least a delimiter and the 16-octet tag


@dataclass(frozen=True, slots=True)
class PushFacts:
    """A checked push request."""

    ttl: int  # as asked, before the service's cap
    urgency: Urgency
    topic: str | None
    delivery_headers: dict[str, str]  # what the user agent needs to decrypt, nothing more


def _header_error(exc: HeaderError, errno: Errno) -> ServiceError:
    return ServiceError(400, errno, str(exc))


def check_aes128gcm_body(body: bytes) -> None:
    """Refuse a body that cannot be an RFC 8188 `aes128gcm` payload."""
    if len(body) < _AES128GCM_HEADER:
        raise ServiceError(400, Errno.BAD_BODY, "aes128gcm body is shorter than its header")
    record_size = int.from_bytes(body[16:20], "big")
    key_id_length = body[20]
    if record_size < _MIN_RECORD:
        raise ServiceError(400, Errno.BAD_BODY, "aes128gcm record size is below 18")
    if len(body) < _AES128GCM_HEADER + key_id_length + 17:
        raise ServiceError(400, Errno.BAD_BODY, "aes128gcm body holds no complete record")


def _without_vapid_key(crypto_key: str) -> str:
    """Crypto-Key minus `p256ecdsa`: the VAPID key is never forwarded to the user agent."""
    kept: list[str] = []
    for group in crypto_key.split(","):
        params = [p.strip() for p in group.split(";") if p.strip()]
        # By name, as the user agent parses it: `p256ecdsa =k` and a bare `p256ecdsa` too.
        params = [p for p in params if p.split("=", 1)[0].strip().lower() != "p256ecdsa"]
        if params:
            kept.append(";".join(params))
    return ",".join(kept)


def check_push(headers: Mapping[str, str], body: bytes, *, max_body: int) -> PushFacts:
    """Check a push request; `headers` have lowercase names, repeated ones joined by ", "."""
    if len(body) > max_body:
        raise ServiceError(
            413, Errno.BODY_TOO_LARGE, f"the body is {len(body)} bytes; at most {max_body}"
        )
    try:
        ttl = parse_ttl(headers.get("ttl"))
    except HeaderError as exc:
        raise _header_error(exc, Errno.BAD_TTL) from None
    try:
        urgency = parse_urgency(headers.get("urgency"))
    except HeaderError as exc:
        raise _header_error(exc, Errno.BAD_URGENCY) from None
    try:
        topic = parse_topic(headers.get("topic"))
    except HeaderError as exc:
        raise _header_error(exc, Errno.BAD_TOPIC) from None
    return PushFacts(ttl, urgency, topic, _delivery_headers(headers, body))


def _delivery_headers(headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    encoding = headers.get("content-encoding", "").strip().lower()
    if not body:
        return {}
    if encoding == "aes128gcm":
        check_aes128gcm_body(body)
        return {"encoding": "aes128gcm"}
    if encoding == "aesgcm":
        encryption = headers.get("encryption", "").strip()
        crypto_key = _without_vapid_key(headers.get("crypto-key", ""))
        if "salt=" not in encryption.lower():
            raise ServiceError(
                400, Errno.BAD_ENCODING, "aesgcm needs an Encryption header with a salt"
            )
        if "dh=" not in crypto_key.lower():
            raise ServiceError(
                400, Errno.BAD_ENCODING, "aesgcm needs a Crypto-Key header with a dh key"
            )
        return {"encoding": "aesgcm", "encryption": encryption, "crypto_key": crypto_key}
    if not encoding:
        raise ServiceError(
            400,
            Errno.BAD_ENCODING,
            "a push with a body needs Content-Encoding: aes128gcm (RFC 8291) or aesgcm",
        )
    raise ServiceError(
        400,
        Errno.BAD_ENCODING,
        f"unsupported Content-Encoding {encoding[:40]!r}; use aes128gcm (or legacy aesgcm)",
    )
