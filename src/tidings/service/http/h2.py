"""HTTP/2 connections (h2 keeps the protocol state), with server push for monitors.

Every request stream is answered by `Routes.handle` in its own task; response bodies
are sent as flow control allows. A handler that keeps a GET open (RFC 8030 monitoring)
uses the stream's `Http2PushChannel` to send PUSH_PROMISEs while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tidings.service.http.messages import Request, Response
from tidings.service.logs import escape

if TYPE_CHECKING:
    from tidings.service.http.server import ConnectionContext

log = logging.getLogger("tidings.http2")

MAX_CONCURRENT_STREAMS = 128


class _Stream:
    """What a request stream holds until it is answered."""

    __slots__ = ("body", "body_size", "closed", "headers", "limit", "task", "too_large")

    def __init__(self, headers: dict[str, str], limit: int) -> None:
        self.headers = headers
        self.body: list[bytes] = []
        self.body_size = 0
        self.limit = limit
        self.too_large = False
        self.closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Http2PushChannel:
    """Server push on one open request stream."""

    def __init__(self, connection: Http2Connection, stream_id: int, stream: _Stream) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self._stream = stream

    @property
    def closed(self) -> asyncio.Event:
        return self._stream.closed

    @property
    def enabled(self) -> bool:
        return bool(self._connection.conn.remote_settings.enable_push)

    def push(self, path: str, response: Response, request_headers: dict[str, str]) -> bool:
        """Promise `GET path` and answer it with `response`; False if that is impossible."""
        return self._connection.push(self._stream_id, path, response, request_headers)


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection, over TLS (ALPN h2) or cleartext with prior knowledge."""

    def __init__(self, context: ConnectionContext, scheme: str = "http") -> None:
        self.context = context
        self.scheme = scheme
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.streams: dict[int, _Stream] = {}
        self._window_waiters: dict[int, asyncio.Future[None]] = {}
        self._push_tasks: set[asyncio.Task[None]] = set()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = f"{peer[0]}:{peer[1]}"
        self.context.connections.add(self)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 * 1024,
            },
        )
        self.conn.initiate_connection()
        self._flush()
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        """Close a connection that holds no stream for `keepalive_timeout` seconds."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(
            self.context.keepalive_timeout, self._idle_timed_out
        )

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        if not self.streams and not self._closed:
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
            self._flush()
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.context.connections.discard(self)
        for stream in self.streams.values():
            stream.closed.set()
            if stream.task is not None:
                stream.task.cancel()
        for waiter in self._window_waiters.values():
            if not waiter.done():
                waiter.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 protocol error from %s: %s", escape(self.client), escape(str(exc)))
            self._flush()
            self._close()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request_received(event)
        elif isinstance(event, h2.events.DataReceived):
            self._data_received(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._stream_gone(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self._resume_sends()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in event.headers or ():
            name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
            value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
            if name == "cookie" and name in headers:
                headers[name] = f"{headers[name]}; {value}"
            else:
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = headers.get(":path", "/").split("?", 1)[0]
        limit = self.context.routes.body_limit(headers.get(":method", "GET"), path)
        stream = _Stream(headers, limit)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            stream.too_large = True
        self.streams[event.stream_id] = stream
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if event.stream_ended is not None:
            self._dispatch(event.stream_id)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is None or event.data is None:
            return
        stream.body_size += len(event.data)
        if stream.body_size > stream.limit:
            stream.too_large = True
            stream.body.clear()
        elif not stream.too_large:
            stream.body.append(event.data)

    def _dispatch(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None:
            return
        stream.task = asyncio.ensure_future(self._answer(stream_id, stream))

    async def _answer(self, stream_id: int, stream: _Stream) -> None:
        headers = stream.headers
        target = headers.get(":path", "/")
        path, _, query = target.partition("?")
        request = Request(
            method=headers.get(":method", "GET"),
            path=path,
            query=query,
            headers={k: v for k, v in headers.items() if not k.startswith(":")},
            body=b"".join(stream.body),
            client=self.client,
            http_version="2",
            push_channel=Http2PushChannel(self, stream_id, stream),
        )
        if "host" not in request.headers and ":authority" in headers:
            request.headers["host"] = headers[":authority"]
        started = time.perf_counter()
        try:
            if stream.too_large:
                response = self.context.routes.too_large(request)
            else:
                response = await self.context.routes.handle(request)
            if not stream.closed.is_set():
                await self._respond(stream_id, request.method, response)
            self.context.log_request(request, response.status, started)
        except asyncio.CancelledError:
            pass
        finally:
            self.streams.pop(stream_id, None)
            if not self.streams and not self._closed:
                self._arm_idle_timer()

    async def _respond(self, stream_id: int, method: str, response: Response) -> None:
        if self._closed:
            return
        headers = [(b":status", str(response.status).encode())]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        headers.append(self.context.date_pair())
        body = b"" if method == "HEAD" else response.body
        if response.status not in (204, 304):
            headers.append((b"content-length", str(len(response.body)).encode()))
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
            self._flush()
            if body:
                await self._send_body(stream_id, body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        while body:
            if self._closed:
                return
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                waiter = asyncio.get_running_loop().create_future()
                self._window_waiters[stream_id] = waiter
                try:
                    await waiter
                finally:
                    self._window_waiters.pop(stream_id, None)
                continue
            chunk, body = body[:window], body[window:]
            self.conn.send_data(stream_id, chunk, end_stream=not body)
            self._flush()

    def _resume_sends(self) -> None:
        for waiter in list(self._window_waiters.values()):
            if not waiter.done():
                waiter.set_result(None)

    def _stream_gone(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.closed.set()
            if stream.task is not None and stream.task is not asyncio.current_task():
                stream.task.cancel()
        waiter = self._window_waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    # Server push --------------------------------------------------------------------------

    def push(
        self, stream_id: int, path: str, response: Response, request_headers: dict[str, str]
    ) -> bool:
        """PUSH_PROMISE a GET of `path` on `stream_id`, then send `response` on it."""
        stream = self.streams.get(stream_id)
        if self._closed or stream is None or stream.closed.is_set():
            return False
        if not self.conn.remote_settings.enable_push:
            return False
        authority = stream.headers.get(":authority") or stream.headers.get("host", "")
        promised = [
            (b":method", b"GET"),
            (b":scheme", self.scheme.encode()),
            (b":authority", authority.encode("latin-1")),
            (b":path", path.encode("latin-1")),
        ]
        promised += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request_headers.items()]
        try:
            promised_id = self.conn.get_next_available_stream_id()
            self.conn.push_stream(stream_id, promised_id, promised)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            return False
        self._flush()
        task = asyncio.ensure_future(self._respond(promised_id, "GET", response))
        self._push_tasks.add(task)
        task.add_done_callback(self._push_tasks.discard)
        return True

    # Plumbing -----------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close_if_idle(self) -> None:
        """Drain: when no stream is open, say GOAWAY and close."""
        if self._closed or self.streams:
            return
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
        self._flush()
        self._close()
