"""Checking an application server's push request, without I/O.

Turns the request's headers and body into the facts the service acts on (TTL,
urgency, topic, how the user agent decrypts it) or a `ServiceError` with the RFC
status: 400 for bad TTL/Urgency/Topic/encoding, 413 for a body too large.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tidings.service.errors import Errno, ServiceError
from tidings.service.records import record
from tidings.webpush import HeaderError, Urgency, parse_topic, parse_ttl, parse_urgency
from tidings.webpush.ece import HEADER_FIXED_LENGTH, MIN_RECORD_SIZE


@record
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
    if len(body) < HEADER_FIXED_LENGTH:
        raise ServiceError(400, Errno.BAD_BODY, "aes128gcm body is shorter than its header")
    record_size = int.from_bytes(body[16:20], "big")
    key_id_length = body[20]
    if record_size < MIN_RECORD_SIZE:
        raise ServiceError(400, Errno.BAD_BODY, "aes128gcm record size is below 18")
    if len(body) < HEADER_FIXED_LENGTH + key_id_length + 17:
        raise ServiceError(400, Errno.BAD_BODY, "aes128gcm body holds no complete record")


MAX_CRYPTO_HEADER = 512
"""Most characters of each aesgcm header relayed to the user agent (`Encryption`, and
`Crypto-Key` without `p256ecdsa=`), once normalised: a salt with a key id and record
size takes about 50, a `dh=` key about 110. A longer one is refused (400,
`Errno.CRYPTO_HEADER_TOO_LONG`)."""

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def normalise_params(value: str, *, drop: str = "") -> str:
    """An aesgcm header as autopush relays it: quotes and base64 `=` padding removed,
    spaces trimmed, empty parameters and any parameter named `drop` left out.

    Firefox decodes `salt` and `dh` as base64url with padding rejected, so a sender
    that pads (or quotes) would otherwise have its messages dropped by the browser.
    """
    groups: list[str] = []
    for group in value.split(","):
        params: list[str] = []
        for param in group.split(";"):
            name, sep, text = param.partition("=")
            name = name.strip()
            if not name:
                continue
            if drop and name.lower() == drop:
                continue
            text = text.replace('"', "").strip()
            if text.endswith("=") and _BASE64URL.fullmatch(text.rstrip("=")):
                text = text.rstrip("=")
            params.append(f"{name}={text}" if sep else name)
        if params:
            groups.append(";".join(params))
    return ",".join(groups)


def _aesgcm_param(header: str, value: str, name: str) -> None:
    """Refuse an aesgcm header without a base64url `name=` (the salt, the dh key)."""
    found = [
        text
        for param in re.split(r"[;,]", value)
        for key, _, text in [param.partition("=")]
        if key.strip().lower() == name
    ]
    if not found:
        raise ServiceError(
            400, Errno.BAD_ENCODING, f"aesgcm needs a {header} header with {name}=..."
        )
    if not _BASE64URL.fullmatch(found[0]):
        raise ServiceError(
            400, Errno.BAD_ENCODING, f"the {name}= of the {header} header is not base64url"
        )


def _relayed(header: str, value: str) -> str:
    if len(value) > MAX_CRYPTO_HEADER:
        raise ServiceError(
            400,
            Errno.CRYPTO_HEADER_TOO_LONG,
            f"the {header} header is {len(value)} characters (without p256ecdsa=, quotes "
            f"and padding); at most {MAX_CRYPTO_HEADER} are relayed to the user agent",
        )
    return value


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
        encryption = _relayed("Encryption", normalise_params(headers.get("encryption", "")))
        crypto_key = _relayed(
            "Crypto-Key", normalise_params(headers.get("crypto-key", ""), drop="p256ecdsa")
        )
        _aesgcm_param("Encryption", encryption, "salt")
        _aesgcm_param("Crypto-Key", crypto_key, "dh")
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
