"""What every connection of one server shares: the app, the settings, the open connections.

`h1` and `h2` both take a `ConnectionContext`; the server (`server.py`) makes it and
says how a connection changes protocol (`make_http2`, `make_websocket`), so neither
protocol module imports the other or the server.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Protocol

from tidings.service.http.app import HttpApp
from tidings.service.http.logsafe import escape
from tidings.service.http.messages import Request

__all__ = ["WRITE_BUFFER_LIMIT", "ConnectionContext", "Drainable", "peer_of"]

access_log = logging.getLogger("tidings.access")

WRITE_BUFFER_LIMIT = 1 << 20  # answers piling up unread: the client is not reading


def peer_of(transport: asyncio.BaseTransport) -> str:
    """The client's `address:port`, for logs and limits ("-" when the socket has none)."""
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "-"


class Drainable(Protocol):
    def close_if_idle(self) -> None: ...


class ConnectionContext:
    """What every connection of one server shares."""

    def __init__(self, app: HttpApp, *, scheme: str) -> None:
        self.app = app
        self.scheme = scheme
        self.connections: set[Drainable] = set()
        self.busy_websockets: set[object] = set()  # handling frames right now
        settings = app.settings
        # To send a whole request (slow clients are cut off), and to send the next one.
        self.request_timeout = settings.request_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.max_websocket_message = settings.max_websocket_message
        self._date_second = 0
        self._date_line = b""

    @property
    def draining(self) -> bool:
        return self.app.draining

    def _refresh_date(self) -> None:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = email.utils.formatdate(now, usegmt=True).encode()

    def date_header(self) -> bytes:
        """`date: ...` CRLF, formatted at most once a second."""
        self._refresh_date()
        return b"date: " + self._date_line + b"\r\n"

    def date_pair(self) -> tuple[bytes, bytes]:
        """The date header as an HTTP/2 header pair."""
        self._refresh_date()
        return (b"date", self._date_line)

    def make_websocket(self, transport: asyncio.Transport, client: str) -> asyncio.Protocol:
        """The protocol of a connection upgraded to WebSocket (the server's to say)."""
        raise NotImplementedError

    def make_http2(self) -> asyncio.Protocol:
        """The protocol of a connection that turned out to speak HTTP/2 (the server's)."""
        raise NotImplementedError

    def log_request(self, request: Request, status: int, started: float) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                '%s "%s %s HTTP/%s" %d %.1fms',
                escape(request.client),
                escape(request.method),
                escape(self.app.redact_path(request.path)),
                escape(request.http_version),
                status,
                (time.perf_counter() - started) * 1000,
                extra={
                    "request_id": request.request_id,
                    "message_id": request.message_id,
                    "trace_id": request.trace_id,
                },
            )
