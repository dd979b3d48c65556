"""HTTP/2 connections for push requests: many streams on one connection, framed by `h2`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tidings.http2.limits import MAX_RESPONSE_BODY, cap_encoder_table, write_bounded
from tidings.sender.transport.base import (
    Response,
    TransportError,
)


class H2Stream:
    __slots__ = ("body", "future", "headers", "pending", "status")

    def __init__(self, future: asyncio.Future[Response], body: bytes) -> None:
        self.future = future
        self.pending = memoryview(body)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection multiplexing many push requests (RFC 9113 via `h2`)."""

    def __init__(self, authority: str, scheme: str) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.authority = authority.encode("ascii")
        self.scheme = scheme.encode("ascii")
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.going_away = False
        self.max_streams = 100
        self._flush_scheduled = False
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    @property
    def usable(self) -> bool:
        """True while new streams may be opened."""
        return not self.closed and not self.going_away

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 24)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        detail = f": {exc}" if exc else ""
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(
                    TransportError(f"HTTP/2 connection closed{detail}", safe_to_retry=False)
                )
        self.streams.clear()
        self._wake_all()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._abort(f"HTTP/2 protocol error: {exc}")
            return
        for event in events:
            self._handle(event)
        self._flush()

    def _give_up(self, stream_id: int, stream: H2Stream) -> None:
        """A response body past MAX_RESPONSE_BODY: the stream is reset, the push failed."""
        del self.streams[stream_id]
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        if not stream.future.done():
            stream.future.set_exception(
                TransportError(
                    f"the service's answer is over {MAX_RESPONSE_BODY} bytes",
                    safe_to_retry=False,  # the push itself may have been accepted
                )
            )
        self._wake_one()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                for name, value in event.headers or ():
                    key = name.decode("latin-1") if isinstance(name, bytes) else name
                    text = value.decode("latin-1") if isinstance(value, bytes) else value
                    if key == ":status":
                        stream.status = int(text)
                    elif key in stream.headers:
                        stream.headers[key] += ", " + text
                    else:
                        stream.headers[key] = text
        elif isinstance(event, h2.events.DataReceived):
            if event.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            stream = self.streams.get(event.stream_id)
            if stream is not None and event.data:
                stream.body += event.data
                if len(stream.body) > MAX_RESPONSE_BODY:
                    self._give_up(event.stream_id, stream)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None and not stream.future.done():
                stream.future.set_result(
                    Response(stream.status, stream.headers, bytes(stream.body), "HTTP/2")
                )
            self._wake_one()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None and not stream.future.done():
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                stream.future.set_exception(
                    TransportError(
                        f"HTTP/2 stream reset by the service ({event.error_code!r})",
                        safe_to_retry=refused,
                    )
                )
            self._wake_one()
        elif isinstance(event, h2.events.WindowUpdated):
            self._send_pending()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            cap_encoder_table(self.conn)
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.max_streams = max(1, min(int(changed.new_value), 1000))
                self._wake_all()
            self._send_pending()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id or 0
            for stream_id in [s for s in self.streams if s > last]:
                stream = self.streams.pop(stream_id)
                if not stream.future.done():
                    stream.future.set_exception(
                        TransportError("HTTP/2 GOAWAY before this stream was processed")
                    )
            if not self.streams and self.transport is not None:
                self.transport.close()
            self._wake_all()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            write_bounded(self.transport, data)

    def _abort(self, message: str) -> None:
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(TransportError(message, safe_to_retry=False))
        self.streams.clear()
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._wake_all()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _send_body(self, stream_id: int, stream: H2Stream) -> None:
        pending = stream.pending
        conn = self.conn
        while pending:
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                break
            chunk = pending[:window]
            pending = pending[window:]
            conn.send_data(stream_id, chunk.tobytes(), end_stream=not pending)
        stream.pending = pending

    def _send_pending(self) -> None:
        for stream_id, stream in list(self.streams.items()):
            if stream.pending:
                try:
                    self._send_body(stream_id, stream)
                except h2.exceptions.StreamClosedError:
                    continue

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Open a stream, send the request, and wait for its complete answer."""
        while len(self.streams) >= self.max_streams and self.usable:
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
        if not self.usable:
            raise TransportError("HTTP/2 connection is going away")
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        stream_id = self.conn.get_next_available_stream_id()
        block = [
            (b":method", method.encode("ascii")),
            (b":scheme", self.scheme),
            (b":authority", self.authority),
            (b":path", path.encode("ascii")),
        ]
        block += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        block.append((b"content-length", str(len(body)).encode("ascii")))
        stream = H2Stream(future, body)
        self.streams[stream_id] = stream
        try:
            self.conn.send_headers(stream_id, block, end_stream=not body)
            if body:
                self._send_body(stream_id, stream)
        except h2.exceptions.ProtocolError as exc:
            self.streams.pop(stream_id, None)
            self.going_away = True
            raise TransportError(f"HTTP/2 connection cannot open a stream: {exc}") from None
        if not self._flush_scheduled:
            # Coalesce the frames of every stream opened in this loop iteration into
            # one write: with many concurrent pushes that is one syscall, not hundreds.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)
        try:
            return await future
        except asyncio.CancelledError:
            if stream_id in self.streams:
                self.streams.pop(stream_id, None)
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    self._flush()
                self._wake_one()
            raise

    def close(self) -> None:
        """Send GOAWAY and close."""
        if not self.closed and self.transport is not None:
            with contextlib.suppress(Exception):
                self.conn.close_connection()
                self._flush()
            self.transport.close()
        self.closed = True
