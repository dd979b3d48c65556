"""RFC 8030 for the user agent without I/O: URL forms, urgency, pushed headers, errors.

Plain functions the RFC 8030 transport (`tidings.useragent.rfc8030`) builds on, tested
with plain strings: which URLs mean RFC 8030, the service and subscribe resource URLs,
the `Urgency` levels, a pushed response's coding headers, and what an error answer says.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from tidings.http2 import H2Response
from tidings.webpush import URGENCIES, HeaderError, parse_urgency
from tidings.webpush.errors import errno_of as body_errno
from tidings.webpush.errors import parse_error_body

__all__ = [
    "URGENCY_LEVELS",
    "check_urgency",
    "delivery_headers",
    "errno_of",
    "error_reason",
    "is_rfc8030_url",
    "origin_of",
    "request_target",
    "rfc8030_url",
    "subscribe_url",
]

URGENCY_LEVELS = URGENCIES


def is_rfc8030_url(service_url: str) -> bool:
    """True for the URL forms that choose RFC 8030 by themselves: h2:// and h2c://."""
    return urlsplit(service_url).scheme.lower() in ("h2", "h2c")


def rfc8030_url(service_url: str) -> str:
    """The http(s) URL of a service given as h2:// (TLS), h2c://, http(s):// or ws(s)://."""
    parts = urlsplit(service_url)
    scheme = {"h2": "https", "https": "https", "wss": "https"}.get(parts.scheme.lower())
    if scheme is None and parts.scheme.lower() in ("h2c", "http", "ws"):
        scheme = "http"
    if scheme is None or not parts.hostname:
        raise ValueError(
            f"an RFC 8030 push service URL must be h2://, h2c://, https:// or http://: "
            f"{service_url}"
        )
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def subscribe_url(service_url: str) -> str:
    """The subscribe resource: `/subscribe` of an origin, or the URL itself when it has a path."""
    url = rfc8030_url(service_url)
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, "/subscribe", "", ""))
    return url


def check_urgency(level: str | None) -> str | None:
    """`level` as the service spells it (`very-low` ... `high`), or None for everything."""
    if level is None:
        return None
    try:
        return str(parse_urgency(level))
    except HeaderError:
        raise ValueError(f"urgency must be one of {', '.join(URGENCY_LEVELS)} or None") from None


def delivery_headers(headers: dict[str, str]) -> dict[str, str]:
    """A pushed response's coding headers, named as `dispatch.open_message` expects."""
    found: dict[str, str] = {}
    for name, key in (
        ("content-encoding", "encoding"),
        ("encryption", "encryption"),
        ("crypto-key", "crypto_key"),
    ):
        value = headers.get(name, "").strip()
        if value:
            found[key] = value
    return found


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def request_target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def error_reason(response: H2Response) -> str:
    """A short reason from an error answer (the service's JSON `message`, when it has one)."""
    document = parse_error_body(response.body)
    if document is not None and document.message is not None:
        return f"status {response.status}: {document.message}"
    return f"status {response.status}"


def errno_of(response: H2Response) -> int | None:
    """The service's `errno` in an error answer, if it has one."""
    return body_errno(response.body)
