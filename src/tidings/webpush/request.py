"""The RFC 8030 push request as a sender makes it: its options checked, its headers.

The sender (`tidings.sender.request`) and the service's playground (`service/web/demo.py`)
both send pushes. `check_options` refuses what a push service would (the rules are
`headers.py`'s, which the service parses with); `push_headers` decides the order and
form of the headers: `TTL`, the body's type and coding headers, VAPID (RFC 8292
`vapid t=, k=`, or the pre-RFC form aesgcm receivers expect), `Urgency` and `Topic`.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidings.webpush.errors import HeaderError
from tidings.webpush.headers import MAX_TTL, URGENCIES, parse_topic
from tidings.webpush.vapid import VapidHeaders

__all__ = ["CONTENT_TYPE", "check_options", "push_headers"]

CONTENT_TYPE = "application/octet-stream"
"""Sent with every encrypted body, as the npm web-push does (some services require it)."""


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


def push_headers(
    *,
    ttl: int,
    has_body: bool,
    coding_headers: Mapping[str, str],
    vapid: VapidHeaders | None,
    urgency: str | None = None,
    topic: str | None = None,
) -> dict[str, str]:
    """The headers of a push request (values already checked; no Content-Length)."""
    headers: dict[str, str] = {"TTL": str(ttl)}
    if has_body:
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
    return headers
