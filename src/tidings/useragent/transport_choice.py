"""Which push protocol a service URL means, and the transport that speaks it."""

from __future__ import annotations

import ssl
from typing import Literal

from tidings.useragent.rfc8030 import Http2Transport, is_rfc8030_url
from tidings.useragent.transport import Transport
from tidings.useragent.websocket import DEFAULT_PING_INTERVAL, WebSocketTransport

__all__ = ["PushProtocol", "make_transport"]

PushProtocol = Literal["websocket", "rfc8030"]
"""The push protocols: Firefox's WebSocket protocol, or RFC 8030 over HTTP/2."""


def make_transport(
    service_url: str,
    protocol: PushProtocol | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    ping_interval: float = DEFAULT_PING_INTERVAL,
    ping_timeout: float = 10.0,
) -> Transport:
    """The transport for `service_url`: `protocol` when given, else by the URL's scheme.

    h2:// (TLS) and h2c:// (cleartext) mean RFC 8030; ws(s):// and http(s):// mean the
    WebSocket protocol unless `protocol="rfc8030"` says otherwise.
    """
    if protocol is None:
        protocol = "rfc8030" if is_rfc8030_url(service_url) else "websocket"
    if protocol == "rfc8030":
        return Http2Transport(
            service_url,
            ssl_context=ssl_context,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
    if protocol == "websocket":
        return WebSocketTransport(
            service_url,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            ssl_context=ssl_context,
        )
    raise ValueError(f"protocol must be 'websocket' or 'rfc8030', not {protocol!r}")
