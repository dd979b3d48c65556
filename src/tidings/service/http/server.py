"""Listening, choosing the protocol of each connection, TLS, and draining.

One port serves HTTP/1.1 (application servers, WebSocket upgrades for browsers) and
HTTP/2: over TLS by ALPN, in cleartext by the connection preface (prior knowledge).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import time
from typing import Protocol, cast

from tidings.service.core import PushService
from tidings.service.http.h1 import Http1Connection
from tidings.service.http.h2 import Http2Connection
from tidings.service.http.messages import Request
from tidings.service.http.websocket import PushWebSocket
from tidings.service.logs import escape
from tidings.service.routes import Routes, redact_path

log = logging.getLogger("tidings.server")
access_log = logging.getLogger("tidings.access")

WEBSOCKET_MAX_MESSAGE = 64 * 1024  # protocol frames are small; a bigger one is abuse


class Drainable(Protocol):
    def close_if_idle(self) -> None: ...


class ConnectionContext:
    """What every connection of one server shares."""

    def __init__(self, service: PushService, routes: Routes, *, scheme: str) -> None:
        self.service = service
        self.routes = routes
        self.scheme = scheme
        self.connections: set[Drainable] = set()
        self.busy_websockets: set[PushWebSocket] = set()  # handling frames right now
        # To send a whole request (slow clients are cut off), and to send the next one.
        self.request_timeout = service.config.request_timeout
        self.keepalive_timeout = service.config.keepalive_timeout
        self.max_websocket_message = WEBSOCKET_MAX_MESSAGE
        self._date_second = 0
        self._date_line = b""

    @property
    def draining(self) -> bool:
        return self.service.draining

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

    def make_websocket(self, transport: asyncio.Transport, client: str) -> PushWebSocket:
        return PushWebSocket(
            transport,
            self.service,
            client,
            max_message=self.max_websocket_message,
            busy=self.busy_websockets,
        )

    def make_http2(self) -> Http2Connection:
        return Http2Connection(self, self.scheme)

    def log_request(self, request: Request, status: int, started: float) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                '%s "%s %s HTTP/%s" %d %.1fms',
                escape(request.client),
                escape(request.method),
                escape(redact_path(request.path)),
                escape(request.http_version),
                status,
                (time.perf_counter() - started) * 1000,
                extra={
                    "request_id": request.request_id,
                    "message_id": request.message_id,
                    "trace_id": request.trace_id,
                },
            )


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context offering h2 and http/1.1 by ALPN."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


class _TlsSelector(asyncio.Protocol):
    """On a TLS connection, pick the protocol ALPN agreed on."""

    def __init__(self, context: ConnectionContext) -> None:
        self.context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.Protocol = (
            self.context.make_http2() if chosen == "h2" else Http1Connection(self.context)
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class TidingsServer:
    """The service's listener: start, drain, stop."""

    def __init__(
        self,
        service: PushService,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        scheme = "https" if ssl_context is not None else "http"
        self.context = ConnectionContext(service, Routes(service), scheme=scheme)
        self._server: asyncio.Server | None = None

    def _protocol(self) -> asyncio.Protocol:
        if self.ssl_context is not None:
            return _TlsSelector(self.context)
        return Http1Connection(self.context)

    async def start(self) -> None:
        """Open the store, then listen."""
        await self.service.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            self.host,
            self.port,
            ssl=self.ssl_context,
            # A client that opens TCP and never finishes the handshake holds a socket
            # and TLS state: it gets a few seconds (asyncio's default is 60).
            ssl_handshake_timeout=(
                self.service.config.tls_handshake_timeout if self.ssl_context else None
            ),
            reuse_port=self.reuse_port or None,
            backlog=4096,
        )
        if self.port == 0:
            sock: socket.socket = self._server.sockets[0]
            self.port = sock.getsockname()[1]

    async def stop(self, grace: float = 10.0) -> None:
        """Drain: stop accepting, close WebSockets with 1001, finish requests, close."""
        if self._server is not None:
            self._server.close()
        await self.service.drain()
        deadline = time.monotonic() + grace
        while True:
            for connection in list(self.context.connections):
                connection.close_if_idle()
            idle = not self.context.connections and not self.context.busy_websockets
            if idle or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.service.stop()
