"""One HTTP/2 connection (TLS with ALPN h2, or cleartext with prior knowledge).

Pushed responses wait in their stream's `pushes`; once MAX_QUEUED_PUSHES wait untaken
on a connection it stops reading (flow control and TCP hold the server back) until its
consumers take them down to RESUME_QUEUED_PUSHES. Read bytes are handed to h2 a push
at a time, so what was read before the pause waits as bytes, never as more pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tidings.http2.limits import (
    MAX_OPEN_PROMISES,
    MAX_PUSHED_BODY,
    MAX_QUEUED_PUSHES,
    MAX_RESPONSE_BODY,
    RESUME_QUEUED_PUSHES,
    ReadPause,
    cap_encoder_table,
    write_bounded,
)


class H2Error(Exception):
    """The connection failed, or a stream was reset."""


@dataclass
class H2Response:
    """A complete response: status, lowercase headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class PushedResponse:
    """A server push: the promised request's path and headers, then its response."""

    path: str
    request_headers: dict[str, str]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _retrieve(future: asyncio.Future[H2Response]) -> None:
    if not future.cancelled():
        future.exception()


class _PushQueue(asyncio.Queue[PushedResponse]):
    """A stream's complete pushes; tells its connection of each one taken."""

    def __init__(self, on_take: Callable[[], None] | None) -> None:
        super().__init__()
        self._on_take = on_take

    def get_nowait(self) -> PushedResponse:  # get() ends here too
        pushed = super().get_nowait()
        if self._on_take is not None:
            self._on_take()
        return pushed


class H2Stream:
    """An open request: its final response (maybe never) and the pushes it carries."""

    def __init__(
        self,
        stream_id: int,
        on_take: Callable[[], None] | None = None,
        *,
        takes_pushes: bool = True,
    ) -> None:
        self.stream_id = stream_id
        self.pushes: asyncio.Queue[PushedResponse] = _PushQueue(on_take)
        """Complete pushes: take them, or the connection stops reading once enough wait."""
        self.takes_pushes = takes_pushes
        self.response: asyncio.Future[H2Response] = asyncio.get_running_loop().create_future()
        # A monitor's response is often never awaited; its failure is no news to log.
        self.response.add_done_callback(_retrieve)
        self.done = asyncio.Event()
        """Set once the stream is over and every push it promised is in `pushes` (or lost)."""
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._finished = False
        self._open_promises = 0

    def _settle(self, *, finished: bool = False, promise_over: bool = False) -> None:
        self._finished = self._finished or finished
        self._open_promises -= 1 if promise_over else 0
        if self._finished and self._open_promises <= 0:
            self.done.set()

    async def next_push(self, timeout: float | None = None) -> PushedResponse:
        """The next complete pushed response on this stream."""
        return await asyncio.wait_for(self.pushes.get(), timeout)


class _Promise:
    """A pushed stream being received."""

    def __init__(self, parent: H2Stream, pushed: PushedResponse) -> None:
        self.parent = parent
        self.pushed = pushed
        self.body: list[bytes] = []
        self.size = 0


def _decode_headers(raw: list[tuple[bytes, bytes]] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw or ():
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _batch_end(data: bytearray, start: int, max_frame: int) -> int:
    """Where to stop handing `data[start:]` to h2: after the first frame that may end
    a stream (so a batch completes at most one push), else after the last whole frame."""
    end = start
    while len(data) - end >= 9:
        length = int.from_bytes(data[end : end + 3], "big")
        if length > max_frame:
            return len(data)  # h2 refuses it at once
        if end + 9 + length > len(data):
            break
        kind, flags = data[end + 3], data[end + 4]
        end += 9 + length
        if (kind in (0x0, 0x1) and flags & 0x1) or (kind == 0x9 and flags & 0x4):
            break  # DATA or HEADERS with END_STREAM, CONTINUATION with END_HEADERS
    return end


class H2Client(asyncio.Protocol):
    """An HTTP/2 client connection to one origin."""

    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        self.scheme = parts.scheme
        self.authority = parts.netloc
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self._streams: dict[int, H2Stream] = {}
        self._promises: dict[int, _Promise] = {}
        self._window_open = asyncio.Event()
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.reading = ReadPause()
        """Paused while MAX_QUEUED_PUSHES complete pushes wait untaken."""
        self._queued = 0  # complete pushes in the streams' queues
        # Read, not yet handed to h2: a frame's start, or one read's rest while paused.
        self._unread = bytearray()

    @classmethod
    async def connect(
        cls, url: str, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10
    ) -> H2Client:
        """Connect to the origin of `url` (https: TLS + ALPN h2; http: prior knowledge)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise H2Error(f"not an http(s) URL: {url}")
        client = cls(f"{parts.scheme}://{parts.netloc}")
        context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            context.set_alpn_protocols(["h2"])
        port = parts.port or (443 if parts.scheme == "https" else 80)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: client,
                    parts.hostname,
                    port,
                    ssl=context,
                    server_hostname=parts.hostname if context else None,
                ),
                timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise H2Error(f"cannot connect to {client.authority}: {exc}") from exc
        if context is not None:
            assert client.transport is not None
            ssl_object = client.transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                client.transport.close()
                raise H2Error(f"{client.authority} does not speak HTTP/2 (ALPN)")
        return client

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 1}
        )
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}" if exc else "connection closed")

    def data_received(self, data: bytes) -> None:
        self._unread += data
        self._feed()

    def _feed(self) -> None:
        """Hand h2 what was read, up to a push at a time; pause once too many wait."""
        data, start = self._unread, 0  # appended to in place: no copy per read
        while start < len(data) and not self.closed.is_set():
            if self._queued >= MAX_QUEUED_PUSHES:
                if self.reading.pause() and self.transport is not None:
                    self.transport.pause_reading()
                break
            end = _batch_end(data, start, self.conn.max_inbound_frame_size)
            if end == start:
                break
            self._receive(bytes(data[start:end]))
            start = end
        del data[: len(data) if self.closed.is_set() else start]
        self._flush()

    def _taken(self) -> None:
        """A consumer took a push: once few wait, read again (first what was held)."""
        self._queued -= 1
        if self._queued > RESUME_QUEUED_PUSHES or self.closed.is_set():
            return
        if self.reading.resume():
            self._feed()
            if not self.reading.paused and self.transport is not None:
                self.transport.resume_reading()

    def _receive(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(f"HTTP/2 protocol error: {exc}")
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._event(event)

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._response_headers(event.stream_id, _decode_headers(event.headers))
        elif isinstance(event, h2.events.PushedStreamReceived):
            parent = self._streams.get(event.parent_stream_id or 0)
            headers = _decode_headers(event.headers)
            if event.pushed_stream_id is not None and len(self._promises) >= MAX_OPEN_PROMISES:
                self._refuse(event.pushed_stream_id)  # stays stored on the server: sent again
            elif event.pushed_stream_id is not None and parent and not parent.takes_pushes:
                self._refuse(event.pushed_stream_id)  # nobody would take it
            elif parent is not None and event.pushed_stream_id is not None:
                pushed = PushedResponse(headers.get(":path", ""), headers)
                self._promises[event.pushed_stream_id] = _Promise(parent, pushed)
                parent._open_promises += 1
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._body(event.stream_id, event.data or b"")
        elif isinstance(event, h2.events.StreamEnded):
            self._ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._reset(event.stream_id, event.error_code)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_open.set()
        elif isinstance(event, h2.events.PingAckReceived):
            waiter = self._pings.pop(bytes(event.ping_data or b""), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            cap_encoder_table(self.conn)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._fail(f"server closed the connection (GOAWAY {event.error_code})")

    def _refuse(self, stream_id: int, code: int = h2.errors.ErrorCodes.REFUSED_STREAM) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.conn.reset_stream(stream_id, error_code=code)

    def _response_headers(self, stream_id: int, headers: dict[str, str]) -> None:
        status = int(headers.pop(":status", "0"))
        promise = self._promises.get(stream_id)
        if promise is not None:
            promise.pushed.status, promise.pushed.headers = status, headers
            return
        stream = self._streams.get(stream_id)
        if stream is not None and status >= 200:
            stream._status, stream._headers = status, headers

    def _body(self, stream_id: int, data: bytes) -> None:
        promise = self._promises.get(stream_id)
        if promise is not None:
            promise.body.append(data)
            promise.size += len(data)
            if promise.size > MAX_PUSHED_BODY:  # dropped: stays stored, sent again
                self._refuse(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._reset(stream_id, "pushed body too large")
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream._body.append(data)
            stream._body_size += len(data)
            if stream._body_size > MAX_RESPONSE_BODY:
                self._refuse(stream_id, h2.errors.ErrorCodes.CANCEL)
                if not stream.response.done():
                    too_large = H2Error(f"response body over {MAX_RESPONSE_BODY} bytes")
                    stream.response.set_exception(too_large)
                self._reset(stream_id, "response body too large")

    def _ended(self, stream_id: int) -> None:
        promise = self._promises.pop(stream_id, None)
        if promise is not None:
            promise.pushed.body = b"".join(promise.body)
            promise.parent.pushes.put_nowait(promise.pushed)
            self._queued += 1
            promise.parent._settle(promise_over=True)
            return
        stream = self._streams.pop(stream_id, None)
        if stream is not None and not stream.response.done():
            response = H2Response(stream._status, stream._headers, b"".join(stream._body))
            stream.response.set_result(response)
        if stream is not None:
            stream._settle(finished=True)

    def _reset(self, stream_id: int, code: object) -> None:
        promise = self._promises.pop(stream_id, None)
        if promise is not None:
            promise.parent._settle(promise_over=True)
        stream = self._streams.pop(stream_id, None)
        if stream is not None and not stream.response.done():
            stream.response.set_exception(H2Error(f"stream reset by the server ({code})"))
        if stream is not None:
            stream._settle(finished=True)

    def _fail(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._window_open.set()
        self.reading.resume()  # nothing more to read: no answer is held back
        self._unread.clear()
        for stream in self._streams.values():
            if not stream.response.done():
                stream.response.set_exception(H2Error(reason))
            stream._settle(finished=True)
        for promise in self._promises.values():
            promise.parent._open_promises = 0
            promise.parent._settle()
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(H2Error(reason))
        self._streams.clear()
        self._promises.clear()
        self._pings.clear()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            write_bounded(self.transport, data)

    # Requests ---------------------------------------------------------------------------

    async def open_stream(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        pushes: bool = True,
    ) -> H2Stream:
        """Send a request and return its stream (the response may come much later).

        With `pushes` the caller takes the stream's pushes (reading stops while too many
        wait); without, pushes promised on it are refused."""
        if self.closed.is_set():
            raise H2Error(self.close_reason or "connection closed")
        stream_id = self.conn.get_next_available_stream_id()
        request = [
            (b":method", method.encode()),
            (b":scheme", self.scheme.encode()),
            (b":authority", self.authority.encode()),
            (b":path", path.encode()),
        ]
        for name, value in (headers or {}).items():
            request.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        if body:
            request.append((b"content-length", str(len(body)).encode()))
        stream = H2Stream(stream_id, self._taken, takes_pushes=pushes)
        self._streams[stream_id] = stream
        self.conn.send_headers(stream_id, request, end_stream=not body)
        self._flush()
        while body:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self._window_open.clear()
                await self._window_open.wait()
                if self.closed.is_set():
                    raise H2Error(self.close_reason or "connection closed")
                continue
            chunk, body = body[:window], body[window:]
            self.conn.send_data(stream_id, chunk, end_stream=not body)
            self._flush()
        return stream

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        timeout: float | None = 30,
    ) -> H2Response:
        """Send a request and wait for its complete response."""
        stream = await self.open_stream(method, path, headers, body, pushes=False)
        return await asyncio.wait_for(asyncio.shield(stream.response), timeout)

    def cancel(self, stream: H2Stream) -> None:
        """Reset an open stream (ends a monitor); pushes it already promised still arrive."""
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.conn.reset_stream(stream.stream_id)
            self._flush()
        self._streams.pop(stream.stream_id, None)
        if not stream.response.done():
            stream.response.cancel()
        stream._settle(finished=True)

    async def ping(self, timeout: float | None = 10) -> float:
        """Send a PING and wait for its ACK; return the round trip in seconds.

        H2Error when the connection is gone, TimeoutError when no ACK came in time
        (a dead peer or a NAT that forgot the connection); time with reading paused
        for unconsumed pushes does not count (the ACK may be among what waits).
        """
        if self.closed.is_set():
            raise H2Error(self.close_reason or "connection closed")
        opaque = os.urandom(8)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[opaque] = waiter
        started = time.monotonic()
        self.conn.ping(opaque)
        self._flush()
        try:
            await self.reading.within(waiter, timeout)
        finally:
            self._pings.pop(opaque, None)
        return time.monotonic() - started

    async def close(self) -> None:
        """Say GOAWAY and close the connection."""
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection()
            self._flush()
        self.transport.close()
        self._fail("closed by the client")

    async def __aenter__(self) -> H2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
