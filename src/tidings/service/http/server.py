"""Listening, choosing the protocol of each connection, TLS, and draining.

One port serves HTTP/1.1 (application servers, WebSocket upgrades for browsers) and
HTTP/2: over TLS by ALPN, in cleartext by the connection preface (prior knowledge).
What it serves is any `HttpApp` (app.py); the push service's is `service/push_app.py`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Generic, TypeVar, cast

from tidings.service.http.app import HttpApp
from tidings.service.http.context import ConnectionContext, Slot, peer_of
from tidings.service.http.h1 import Http1Connection
from tidings.service.http.h2 import Http2Connection
from tidings.service.http.websocket import WebSocketConnection

__all__ = ["ConnectionContext", "HttpServer", "TidingsServer", "tls_context"]

App = TypeVar("App", bound=HttpApp)

log = logging.getLogger("tidings.http")


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


class _TlsHandshake(asyncio.Protocol):
    """A TCP connection on the TLS port, counted from accept, through its TLS handshake.

    `create_server(ssl=...)` calls a server's protocol only once the handshake is done, so
    a client that never finished one held a descriptor outside the connection caps. The
    listener takes plain TCP instead: this protocol counts the connection at accept (its
    peer known), starts TLS itself (`loop.start_tls`), then hands the slot to the protocol
    ALPN chose; a handshake that fails, times out, is reset or cancelled gives it back.
    """

    def __init__(
        self,
        context: ConnectionContext,
        ssl_context: ssl.SSLContext,
        timeout: float,
        handshakes: set[asyncio.Task[None]],
    ) -> None:
        self.context = context
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.handshakes = handshakes  # the server's, to cancel them when it stops
        self.tcp: asyncio.Transport | None = None
        self._client_hello = b""  # read before start_tls took the socket (uvloop reads early)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        tcp = cast(asyncio.Transport, transport)
        slot = self.context.admit(tcp, handshake=True)
        if slot is None:
            return  # closed at once: the node, or the address's handshakes, at their cap
        self.tcp = tcp
        tcp.pause_reading()  # the ClientHello is the TLS layer's (asyncio reads nothing now)
        task = asyncio.get_running_loop().create_task(self._handshake(tcp, slot))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    def data_received(self, data: bytes) -> None:
        # uvloop starts reading after connection_made whatever it was told: keep the first
        # bytes (one read, then paused) for the TLS layer.
        if self.tcp is not None:
            self.tcp.pause_reading()
        self._client_hello += data

    async def _handshake(self, tcp: asyncio.Transport, slot: Slot) -> None:
        """Run the handshake; on success hand the connection (and its slot) on."""
        admission = self.context.admission
        handed_off = False
        try:
            if tcp.is_closing():
                return  # lost already: start_tls would wait on it until its timeout
            loop = asyncio.get_running_loop()
            if self._client_hello:
                # Queued before start_tls queues its own start: the bytes come first.
                loop.call_soon(self._replay_client_hello, tcp)
            receiver = _HandOff()
            tls = await loop.start_tls(
                tcp,
                receiver,
                self.ssl_context,
                server_side=True,
                ssl_handshake_timeout=self.timeout,
            )
            admission.handshake_done(slot)
            if tls is None or tls.is_closing() or receiver.lost:
                return
            handed_off = True
            receiver.hand_off(tls, self._chosen_protocol(tls, slot))
        except OSError as exc:  # failed (SSLError), timed out or reset: start_tls closed it
            log.debug("TLS handshake from %s failed: %r", peer_of(tcp), exc)
        finally:
            if not handed_off:
                admission.close(slot)

    def _replay_client_hello(self, tcp: asyncio.Transport) -> None:
        """Give the TLS layer the bytes read before it took the socket, as a transport would."""
        data, self._client_hello = self._client_hello, b""
        protocol = tcp.get_protocol()
        if protocol is self:
            tcp.abort()  # start_tls did not take the socket: it failed, nothing to give
            return
        # Both loops' SSLProtocol is a buffered protocol (uvloop's without subclassing).
        buffered = cast(asyncio.BufferedProtocol, protocol)
        view = memoryview(data)
        while view:
            buffer = memoryview(buffered.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            buffered.buffer_updated(size)
            view = view[size:]

    def _chosen_protocol(self, tls: asyncio.Transport, slot: Slot) -> asyncio.Protocol:
        """HTTP/2 or HTTP/1.1, as ALPN agreed, holding the connection's slot from now on."""
        ssl_object = tls.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if chosen == "h2":
            return self.context.make_http2(slot)
        return Http1Connection(self.context, slot=slot)


class _HandOff(asyncio.Protocol):
    """The TLS transport's protocol from the end of the handshake to the hand-off.

    asyncio may deliver the first request before `start_tls` returns, and a close it
    queued meanwhile still comes here: both go on to the chosen protocol, in order.
    """

    def __init__(self) -> None:
        self.protocol: asyncio.Protocol | None = None
        self.early: list[bytes] = []  # at most what one read decrypts: start_tls returns next
        self.eof = False
        self.lost = False  # before the hand-off: the slot is then given back, not handed on

    def hand_off(self, tls: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        early, self.early = self.early, []
        for data in early:
            protocol.data_received(data)
        if self.eof and not protocol.eof_received():
            tls.close()

    def data_received(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.data_received(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        if self.protocol is not None:
            return self.protocol.eof_received()
        self.eof = True
        return True  # kept open: the chosen protocol decides

    def connection_lost(self, exc: Exception | None) -> None:
        if self.protocol is not None:
            self.protocol.connection_lost(exc)
        else:
            self.lost = True


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
        self._handshakes: set[asyncio.Task[None]] = set()  # TLS handshakes in progress

    def _protocol(self) -> asyncio.Protocol:
        if self.ssl_context is not None:
            # A client that opens TCP and never finishes the handshake holds a socket
            # and TLS state: it gets a few seconds (asyncio's default is 60).
            timeout = self.app.settings.tls_handshake_timeout
            return _TlsHandshake(self.context, self.ssl_context, timeout, self._handshakes)
        return Http1Connection(self.context)

    async def start(self) -> None:
        """Start the app (the service opens its store), then listen."""
        await self.app.start()
        loop = asyncio.get_running_loop()
        # Plain TCP even for TLS: _TlsHandshake starts TLS once the connection is counted.
        self._server = await loop.create_server(
            self._protocol,
            self.host,
            self.port,
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
        for handshake in list(self._handshakes):
            handshake.cancel()  # nobody is served now: their slots are given back
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
