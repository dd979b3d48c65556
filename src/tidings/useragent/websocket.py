"""Firefox's WebSocket push protocol as a `Transport`: a thin asyncio layer.

The frames themselves are built and parsed in `tidings.useragent.protocol`; this module
only moves them over a `websockets` connection, matches replies to requests, and keeps
the connection honest with `{}` pings: a ping that is not sent and answered within
`ping_timeout` means the connection is dead (a NAT forgot it, the service hung or stopped
reading, so that the ping waits behind a full write buffer), so it is closed (the socket
aborted if the close cannot be written either) and the user agent reconnects.

Notifications wait in an `EventQueue`: while it is full the reader waits, `websockets`
stops reading the socket once its own MAX_QUEUED_FRAMES frames wait, and the service's
writes back up; time paused so does not count against a ping's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.protocol import State

from tidings.useragent import protocol as fp
from tidings.useragent.transport import (
    Acknowledgement,
    ConnectionClosed,
    Delivery,
    EventQueue,
    SubscribeRefused,
    TransportEvent,
    TransportSubscription,
)

__all__ = ["BroadcastListener", "WebSocketConnection", "WebSocketTransport", "websocket_url"]

# A service's frame is a notification or a short answer. The largest notification a
# push service sends carries a body of at most 64 KiB (Tidings' highest max_body;
# autopush's is 4 KiB) as base64, about 88 KiB: 128 KiB bounds one frame with room
# (MAX_QUEUED_FRAMES of them wait at most; 1 MiB was taken before). Past it the
# connection closes (1009) and the user agent reconnects.
MAX_MESSAGE_BYTES = 128 * 1024

log = logging.getLogger("tidings.useragent.websocket")

DEFAULT_PING_INTERVAL = 300.0
"""Seconds between `{}` pings; Firefox uses five minutes (`dom.push.pingInterval`)."""


def websocket_url(service_url: str) -> str:
    """The WebSocket URL of a service given as ws(s):// or as its http(s):// origin."""
    parts = urlsplit(service_url)
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss"):
        return service_url
    if scheme in ("http", "https"):
        path = parts.path or "/"
        return urlunsplit(("ws" if scheme == "http" else "wss", parts.netloc, path, "", ""))
    raise ValueError(f"push service URL must be ws://, wss://, http:// or https://: {service_url}")


BroadcastListener = Callable[[dict[str, str]], None]
"""Called with {id: new version} when the service announces broadcast changes."""

MAX_BROADCASTS = 64  # broadcast ids followed at most (the service's bound too)
# Frames `websockets` buffers before pausing the socket (its default; reading resumes at a
# quarter): with the EventQueue's bound, what a fast service makes us hold while we lag.
MAX_QUEUED_FRAMES = 16


class WebSocketTransport:
    """Opens Firefox-protocol connections to one push service.

    It also follows Megaphone broadcasts as Firefox does: `broadcasts` ({id: version
    known}) go in every hello, `subscribe_broadcasts` adds ids on the open connection,
    and each new version the service announces updates `broadcasts` and is given to
    the `on_broadcast` listeners. Ids the service does not know land in
    `broadcast_errors`.
    """

    def __init__(
        self,
        url: str,
        *,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_timeout: float = 10.0,
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = websocket_url(url)
        self.ssl_context = ssl_context
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.broadcasts: dict[str, str] = {}
        self.broadcast_errors: dict[str, str] = {}
        self._broadcast_listeners: list[BroadcastListener] = []
        self._live: WebSocketConnection | None = None

    def on_broadcast(self, listener: BroadcastListener) -> None:
        """Call `listener({id: version})` whenever followed broadcasts change."""
        self._broadcast_listeners.append(listener)

    async def subscribe_broadcasts(self, versions: dict[str, str]) -> None:
        """Follow broadcast ids, each with the version already known ("" for none).

        Sent at once on an open connection, and in every later hello. ValueError past
        MAX_BROADCASTS ids.
        """
        merged = {**self.broadcasts, **versions}
        if len(merged) > MAX_BROADCASTS:
            raise ValueError(f"a user agent follows at most {MAX_BROADCASTS} broadcasts")
        self.broadcasts = merged
        live = self._live
        if live is not None and not live.closed:
            await live.send_broadcast_subscribe(versions)

    def _broadcast_answer(self, answer: dict[str, Any]) -> None:
        """A hello's or a broadcast frame's `broadcasts`: record, then tell listeners."""
        changed: dict[str, str] = {}
        for key, value in answer.items():
            if key == "errors" and isinstance(value, dict):
                self.broadcast_errors.update(
                    {k: str(v) for k, v in value.items() if k in self.broadcasts}
                )
            elif isinstance(value, str) and key in self.broadcasts:
                self.broadcast_errors.pop(key, None)
                if self.broadcasts[key] != value:
                    self.broadcasts[key] = value
                    changed[key] = value
        if changed:
            for listener in list(self._broadcast_listeners):
                try:
                    listener(dict(changed))
                except Exception:
                    log.exception("broadcast listener failed")

    async def connect(self, session_id: str | None, handles: Sequence[str]) -> WebSocketConnection:
        """Open a WebSocket, say hello as `session_id`, return the live connection."""
        tls: dict[str, Any] = {}
        if self.ssl_context is not None and self.url.startswith("wss:"):
            tls["ssl"] = self.ssl_context  # which certificates to trust (a private CA)
        try:
            ws = await connect(
                self.url,
                open_timeout=self.open_timeout,
                # Push frames are small and encrypted: compression would only cost memory.
                compression=None,
                # The protocol's own `{}` pings keep the connection alive, as Firefox does.
                ping_interval=None,
                close_timeout=2,
                max_size=MAX_MESSAGE_BYTES,
                max_queue=MAX_QUEUED_FRAMES,
                **tls,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionClosed(f"cannot connect to {self.url}: {exc}") from exc
        connection = WebSocketConnection(ws, self)
        try:
            await connection.hello(session_id)
        except BaseException:
            await connection.close()
            raise
        self._live = connection
        return connection


class WebSocketConnection:
    """One open WebSocket to the push service, after a successful hello."""

    def __init__(self, ws: ClientConnection, transport: WebSocketTransport) -> None:
        self._ws = ws
        self._transport = transport
        self._uaid = ""
        self._events = EventQueue()
        self._pending: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._pong = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.close_reason = ""

    @property
    def session_id(self) -> str:
        """The uaid the service answered hello with."""
        return self._uaid

    @property
    def closed(self) -> bool:
        return self._closed

    async def send_broadcast_subscribe(self, versions: dict[str, str]) -> None:
        """Follow more broadcasts; the answer (if any) comes as a broadcast frame."""
        await self._send(fp.broadcast_subscribe_frame(versions))

    async def hello(self, uaid: str | None) -> None:
        """Send hello and wait for its answer; start reading and pinging."""
        try:
            await self._ws.send(fp.hello_frame(uaid, self._transport.broadcasts))
            async with asyncio.timeout(self._transport.request_timeout):
                while True:
                    reply = fp.parse_server_frame(await self._ws.recv())
                    if isinstance(reply, fp.HelloReply):
                        break
        except (WsConnectionClosed, TimeoutError, fp.ProtocolError) as exc:
            raise ConnectionClosed(f"hello failed: {exc or type(exc).__name__}") from exc
        if reply.status != 200:
            raise ConnectionClosed(f"the service answered hello with status {reply.status}")
        self._uaid = reply.uaid
        self._transport._broadcast_answer(reply.broadcasts)
        self._tasks.append(asyncio.create_task(self._read(), name="tidings-ua-read"))
        if self._transport.ping_interval > 0:
            self._tasks.append(asyncio.create_task(self._keepalive(), name="tidings-ua-ping"))

    # Requests ---------------------------------------------------------------------------

    async def _request(self, kind: str, channel_id: str, frame: str) -> Any:
        if self._closed:
            raise ConnectionClosed(self.close_reason or "connection closed")
        key = (kind, channel_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            await self._send(frame)
            async with asyncio.timeout(self._transport.request_timeout):
                return await future
        except TimeoutError:
            raise ConnectionClosed(f"no answer to {kind} within the timeout") from None
        finally:
            self._pending.pop(key, None)

    async def subscribe(
        self, proposed_handle: str, application_server_key: str | None
    ) -> TransportSubscription:
        """`register` a channel; the handle is the channel id."""
        channel_id = proposed_handle.lower()
        reply: fp.RegisterReply = await self._request(
            "register", channel_id, fp.register_frame(channel_id, application_server_key)
        )
        if reply.status != 200 or reply.endpoint is None:
            raise SubscribeRefused(
                reply.status, f"the push service refused the subscription (status {reply.status})"
            )
        return TransportSubscription(channel_id, reply.endpoint)

    async def unsubscribe(self, handle: str) -> None:
        """`unregister` a channel (a 200 or a refusal both end the matter)."""
        reply: fp.UnregisterReply = await self._request(
            "unregister", handle, fp.unregister_frame(handle)
        )
        if reply.status != 200:
            log.info("unregister of %s answered %d", handle, reply.status)

    async def acknowledge(self, acks: Sequence[Acknowledgement]) -> None:
        """One `ack` frame for the batch."""
        if acks:
            updates = [fp.AckUpdate(a.handle, a.message_id, a.code) for a in acks]
            await self._send(fp.ack_frame(updates))

    async def next_event(self) -> TransportEvent:
        """The next notification; ConnectionClosed once the connection is gone."""
        return await self._events.get()

    async def _send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except WsConnectionClosed as exc:
            await self._closed_by(f"send failed: {exc}")
            raise ConnectionClosed(self.close_reason) from exc

    # Background -------------------------------------------------------------------------

    async def _read(self) -> None:
        reason = "closed by the service"
        try:
            async for text in self._ws:
                message = fp.parse_server_frame(text)
                if isinstance(message, fp.Notification):  # waits while the UA is behind
                    await self._events.put(
                        Delivery(message.channel_id, message.version, message.body, message.headers)
                    )
                else:
                    self._on_frame(message)
        except WsConnectionClosed as exc:
            reason = f"closed: {exc}"
        except fp.ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("closing: the service sent a bad frame (%s)", exc)
        except Exception as exc:  # never let the reader die silently
            reason = f"reader failed: {exc!r}"
            log.exception("WebSocket reader failed")
        else:
            if self._ws.close_code is not None:
                reason = f"closed by the service (code {self._ws.close_code})"
        await self._closed_by(reason)

    def _on_frame(self, message: fp.ServerMessage) -> None:
        if isinstance(message, fp.Pong):
            self._pong.set()
        elif isinstance(message, fp.RegisterReply | fp.UnregisterReply):
            kind = "register" if isinstance(message, fp.RegisterReply) else "unregister"
            future = self._pending.get((kind, message.channel_id))
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, fp.Broadcast):
            self._transport._broadcast_answer(message.broadcasts)
        # hello (a second one) and unknown types are ignored, as Firefox does.

    async def _ping(self) -> None:
        """Send `{}` (it waits while our write buffer is full) and wait for its answer."""
        self._pong.clear()
        await self._ws.send(fp.PING)
        await self._pong.wait()

    async def _keepalive(self) -> None:
        interval, timeout = self._transport.ping_interval, self._transport.ping_timeout
        while not self._closed:
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:  # the send counts too: a service that stops reading must not hang us
                await self._events.reading.within(self._ping(), timeout)
            except (TimeoutError, WsConnectionClosed):
                log.info("ping not sent and answered in %.1f s: the connection is dead", timeout)
                await self._closed_by("ping timed out")
                return
            log.debug("ping answered in %.1f ms", (time.monotonic() - started) * 1000)

    async def _closed_by(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._events.close(reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(reason))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), 2)
        # A service that does not read leaves the close frame unwritten (close waits for
        # room in the write buffer, not for close_timeout): let the socket go regardless.
        if self._ws.state is not State.CLOSED:
            self._ws.transport.abort()

    async def close(self) -> None:
        """Close the WebSocket and stop the background tasks."""
        await self._closed_by("closed by the user agent")
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
