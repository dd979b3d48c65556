"""The RFC 8030 push request's headers, assembled once for every sender in Tidings.

The sender (`tidings.sender.request`) and the service's playground (`service/web/demo.py`)
both send pushes; the order and form of their headers is decided here: `TTL`, the body's
type and coding headers, VAPID (RFC 8292 `vapid t=, k=`, or the pre-RFC form aesgcm
receivers expect), then `Urgency` and `Topic`. Checking the values is `headers.py`'s.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidings.webpush.vapid import VapidHeaders

__all__ = ["CONTENT_TYPE", "push_headers"]

CONTENT_TYPE = "application/octet-stream"
"""Sent with every encrypted body, as the npm web-push does (some services require it)."""


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
