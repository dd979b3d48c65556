"""Listening, choosing the protocol of each connection, TLS, and draining.

One port serves HTTP/1.1 (application servers, WebSocket upgrades for browsers) and
HTTP/2: over TLS by ALPN, in cleartext by the connection preface (prior knowledge).
What it serves is any `HttpApp` (app.py); the push service's is `service/push_app.py`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Generic, TypeVar, cast

from tidings.service.http.app import HttpApp
from tidings.service.http.context import ConnectionContext, Slot
from tidings.service.http.h1 import Http1Connection
from tidings.service.http.h2 import Http2Connection
from tidings.service.http.websocket import WebSocketConnection

__all__ = ["ConnectionContext", "HttpServer", "TidingsServer", "tls_context"]

App = TypeVar("App", bound=HttpApp)


class _ServerContext(ConnectionContext):
    """The context whose connections switch to this package's HTTP/2 and WebSocket."""

    def make_websocket(
        self, transport: asyncio.Transport, client: str, slot: Slot | None = None
    ) -> WebSocketConnection:
        return WebSocketConnection(
            transport,
            self.app.open_websocket,
            client,
            max_message=self.max_websocket_message,
            hello_timeout=self.app.settings.hello_timeout,
            busy=self.busy_websockets,
            admission=self.admission if slot is not None else None,
            slot=slot,
        )

    def make_http2(self, slot: Slot | None = None) -> Http2Connection:
        return Http2Connection(self, self.scheme, slot=slot)


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
        # Counted from here: asyncio calls no protocol before the handshake is done.
        slot = self.context.admit(transport)
        if slot is None:
            return  # closed at once: the process is at max_connections
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.Protocol = (
            self.context.make_http2(slot)
            if chosen == "h2"
            else Http1Connection(self.context, slot=slot)
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class HttpServer(Generic[App]):
    """The listener of one app: start, drain, stop."""

    def __init__(
        self,
        app: App,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        scheme = "https" if ssl_context is not None else "http"
        self.context: ConnectionContext = _ServerContext(app, scheme=scheme)
        self._server: asyncio.Server | None = None

    def _protocol(self) -> asyncio.Protocol:
        if self.ssl_context is not None:
            return _TlsSelector(self.context)
        return Http1Connection(self.context)

    async def start(self) -> None:
        """Start the app (the service opens its store), then listen."""
        await self.app.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            self.host,
            self.port,
            ssl=self.ssl_context,
            # A client that opens TCP and never finishes the handshake holds a socket
            # and TLS state: it gets a few seconds (asyncio's default is 60).
            ssl_handshake_timeout=(
                self.app.settings.tls_handshake_timeout if self.ssl_context else None
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
        await self.app.drain()
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
        await self.app.stop()


TidingsServer = HttpServer
"""The former name, from when the server took the push service itself (now its app)."""
