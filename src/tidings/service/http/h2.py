"""HTTP/2 connections (h2 keeps the protocol state), with server push for monitors.

Over 500 lines: one connection class; streams, flow control, push and the limits share its h2 state.

Every request stream is answered by the app's `handle` (app.py) in its own task;
response bodies are sent as flow control allows. A handler that keeps a GET open
(RFC 8030 monitoring) uses the stream's `Http2PushChannel` to send PUSH_PROMISEs while
it waits.

A hostile peer costs a bounded share (docs/security.md, "HTTP/2"): at most
`MAX_CONCURRENT_STREAMS` streams, each with `request_timeout` to send its request;
at most `WRITE_BUFFER_LIMIT` bytes queued for a peer that does not read (reading
stops until they drain, the connection closes if they do not); rapid-reset floods
and floods of frames that cost work but carry no request (PING, SETTINGS, PRIORITY,
empty DATA: CVE-2019-9512, -9515, -9516, -9518) end with GOAWAY ENHANCE_YOUR_CALM; a
request whose declared length is over the limit is answered 413 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tidings.http2.limits import cap_encoder_table
from tidings.service.http.context import WRITE_BUFFER_LIMIT, ConnectionContext, Slot, peer_of
from tidings.service.http.logsafe import escape
from tidings.service.http.messages import Request, Response

log = logging.getLogger("tidings.http2")

MAX_CONCURRENT_STREAMS = 100  # advertised; streams beyond it get RST_STREAM REFUSED_STREAM
# Streams the peer resets (or we refuse) before they are answered: past this many, and
# more than were answered, the peer is flooding (CVE-2023-44487) and is sent away.
RAPID_RESET_LIMIT = 200
MAX_FRAME_CHUNK = 16 * 1024  # DATA frame size we send, whatever the peer allows
MAX_HEADER_LIST_SIZE = 16 * 1024  # as HTTP/1.1's 16 KiB of headers
# Frames with no request in them: a budget of CONTROL_FRAME_BURST, refilled at
# CONTROL_FRAME_RATE a second (a browser sends a few PINGs a minute, SETTINGS once).
CONTROL_FRAME_BURST = 1000
CONTROL_FRAME_RATE = 100.0


class _Stream:
    """What a request stream holds until it is answered."""

    __slots__ = (
        "body",
        "body_size",
        "closed",
        "ended",
        "headers",
        "limit",
        "task",
        "timer",
        "too_large",
    )

    def __init__(self, headers: dict[str, str], limit: int) -> None:
        self.headers = headers
        self.body: list[bytes] = []
        self.body_size = 0
        self.limit = limit
        self.too_large = False
        self.ended = False  # the peer has sent its whole request
        self.closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # request_timeout, until the request ends


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

    async def received(self, timeout: float) -> bool:
        return await self._connection.confirm_received(timeout)


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection, over TLS (ALPN h2) or cleartext with prior knowledge."""

    def __init__(
        self, context: ConnectionContext, scheme: str = "http", *, slot: Slot | None = None
    ) -> None:
        self.context = context
        self.slot = slot  # its count in the connection caps, given back in connection_lost
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
        # Backpressure: over WRITE_BUFFER_LIMIT unread, reading stops and DATA waits.
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._unanswered_resets = 0  # streams reset or refused before their answer
        self._answered = 0
        self._control_budget = float(CONTROL_FRAME_BURST)
        self._pings_sent = 0
        self._ping_waiters: dict[bytes, asyncio.Future[bool]] = {}  # one per waiting monitor
        self._control_refilled = time.monotonic()

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if self.slot is None:
            self.slot = self.context.admit(transport)
            if self.slot is None:
                self._closed = True  # refused: the process is at max_connections
                return
        self.client = peer_of(transport)
        self.context.connections.add(self)
        # pause_writing() past the cap, resume_writing() once a quarter of it is left.
        transport.set_write_buffer_limits(high=WRITE_BUFFER_LIMIT)
        codes = h2.settings.SettingCodes
        header_list = {codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={codes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS, **header_list},
        )
        self.conn.initiate_connection()
        # The limit is advertised above; h2 would enforce it with a connection error (its
        # header block left undecoded), so it is enforced per stream here instead.
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=header_list)
        # h2 gives the HPACK decoder its own default (64 KiB) unless a change is acknowledged.
        self.conn.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        self._flush()
        # The header deadline: the preface and a first request within request_timeout.
        self._arm_idle_timer(self.context.request_timeout)

    def _arm_idle_timer(self, delay: float | None = None) -> None:
        """Close a connection that holds no stream for `keepalive_timeout` seconds."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(
            self.context.keepalive_timeout if delay is None else delay, self._idle_timed_out
        )

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        if not self.streams and not self._closed:
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
            self._flush()
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self.slot is not None:
            self.context.admission.close(self.slot)
            self.slot = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self.context.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.closed.set()
            if stream.timer is not None:
                stream.timer.cancel()
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        for waiter in self._window_waiters.values():
            if not waiter.done():
                waiter.cancel()
        for answered in self._ping_waiters.values():
            if not answered.done():
                answered.set_result(False)
        if self._drained is not None and not self._drained.done():
            self._drained.cancel()

    def pause_writing(self) -> None:
        """The peer leaves WRITE_BUFFER_LIMIT unread: stop reading it, give it a deadline."""
        self._writing_paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self._drain_timer is None:
            self._drain_timer = asyncio.get_running_loop().call_later(
                self.context.request_timeout, self._drain_timed_out
            )

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        if self._writing_paused and self.transport is not None:
            log.info("dropping %s: not reading", self.client)
            self._closed = True
            self.transport.abort()

    async def _writable(self) -> None:
        """Wait while the peer has WRITE_BUFFER_LIMIT bytes unread."""
        while self._writing_paused and not self._closed:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 protocol error from %s: %s", escape(self.client), escape(str(exc)))
            self._flush()
            self._close()
            return
        for event in events:
            self._event(event)
            if self._closed:
                return
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request_received(event)
        elif isinstance(event, h2.events.DataReceived):
            if not event.flow_controlled_length and not event.stream_ended:
                self._spend_control_budget()
            self._data_received(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
            self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._spend_control_budget()
            cap_encoder_table(self.conn)  # MAX_ENCODER_TABLE, as our clients do
        elif isinstance(
            event,
            h2.events.PingReceived | h2.events.PriorityUpdated | h2.events.UnknownFrameReceived,
        ):
            self._spend_control_budget()
        elif isinstance(event, h2.events.StreamReset):
            if event.remote_reset and event.stream_id in self.streams:
                task = self.streams[event.stream_id].task
                if task is None or not task.done():
                    self._count_unanswered()
            self._stream_gone(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self._spend_control_budget()  # given back by the DATA frames it opens room for
            self._resume_sends()
        elif isinstance(event, h2.events.PingAckReceived):
            answered = self._ping_waiters.pop(bytes(event.ping_data or b""), None)
            if answered is not None and not answered.done():
                answered.set_result(True)
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
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            # Past the advertised limit (a peer need not have acknowledged it yet).
            code = h2.errors.ErrorCodes.REFUSED_STREAM
            with contextlib.suppress(h2.exceptions.StreamClosedError):  # reset by the peer
                self.conn.reset_stream(event.stream_id, error_code=code)
            self._count_unanswered()
            return
        path = headers.get(":path", "/").split("?", 1)[0]
        limit = self.context.app.body_limit(headers.get(":method", "GET"), path)
        stream = _Stream(headers, limit)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            stream.too_large = True
        self.streams[event.stream_id] = stream
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if event.stream_ended is not None:
            stream.ended = True
            self._dispatch(event.stream_id)
        elif stream.too_large:
            self._dispatch(event.stream_id)  # 413 now: no need to wait for a body refused
        else:
            stream.timer = asyncio.get_running_loop().call_later(
                self.context.request_timeout, self._request_timed_out, event.stream_id
            )

    def _request_timed_out(self, stream_id: int) -> None:
        """The request's body did not arrive within request_timeout: 408, end the stream."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None or self._closed:
            return
        stream.timer = None
        self._forget(stream_id, stream)
        response = self.context.app.plain_error(408, "the request was not sent in time")
        headers = [(b":status", b"408")]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        headers.append((b"content-length", str(len(response.body)).encode()))
        try:
            fits = self.conn.local_flow_control_window(stream_id) >= len(response.body)
            self.conn.send_headers(stream_id, headers, end_stream=not fits)
            if fits:
                self.conn.send_data(stream_id, response.body, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self._stop_request(stream_id)

    def _stop_request(self, stream_id: int) -> None:
        """Answered before the request ended: tell the peer to stop (RFC 9113 section 8.1)."""
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)
        self._flush()

    def _count_unanswered(self) -> None:
        """One more stream reset or refused unanswered; a flood of them ends the connection."""
        self._unanswered_resets += 1
        if self._unanswered_resets > RAPID_RESET_LIMIT and self._unanswered_resets > self._answered:
            log.info("closing %s: rapid reset", self.client)
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._flush()
            self._close()

    def _spend_control_budget(self) -> None:
        """One frame that costs work and carries no request; a flood ends the connection."""
        now = time.monotonic()
        self._control_budget = min(
            float(CONTROL_FRAME_BURST),
            self._control_budget + (now - self._control_refilled) * CONTROL_FRAME_RATE,
        )
        self._control_refilled = now
        self._control_budget -= 1
        if self._control_budget < 0 and not self._closed:
            log.info("closing %s: control frame flood", self.client)
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._flush()
            self._close()

    def _data_received(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.body_size > stream.limit * 4 + 65536:
            # A flood, not a modest excess: answered 413 already, and no more window for it
            # (flow control stops the peer; only its own connection's window is spent).
            return
        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if stream is None or event.data is None:
            return
        stream.body_size += len(event.data)
        if stream.body_size > stream.limit:
            stream.too_large = True
            stream.body.clear()
            if stream.body_size > stream.limit * 4 + 65536:
                self._dispatch(event.stream_id)
        elif not stream.too_large:
            stream.body.append(event.data)

    def _dispatch(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None:
            return
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
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
                response = self.context.app.too_large(request)
            elif self.slot is not None and self.slot.refused:
                response = self.context.refusal()  # over its address's cap: then GOAWAY
            else:
                response = await self.context.app.handle(request)
            if not stream.closed.is_set():
                await self._respond(stream_id, request.method, response)
                self._answered += 1
                if not stream.ended:
                    self._stop_request(stream_id)
            self.context.log_request(request, response.status, started)
        except asyncio.CancelledError:
            pass
        finally:
            if self.streams.get(stream_id) is stream:
                self._forget(stream_id, stream)

    def _forget(self, stream_id: int, stream: _Stream) -> None:
        """Drop a stream and what it holds; an empty connection starts its idle timer."""
        stream.closed.set()
        stream.body.clear()
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        del self.streams[stream_id]
        if not self.streams and not self._closed:
            if self.slot is not None and self.slot.refused:
                self.close_if_idle()  # its refusal answered: nothing more on it
            else:
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
            await self._writable()
            if self._closed:
                return
            window = min(
                self.conn.local_flow_control_window(stream_id),
                self.conn.max_outbound_frame_size,
                MAX_FRAME_CHUNK,
            )
            if window <= 0:
                if not await self._window_opened(stream_id):
                    return
                continue
            chunk, body = body[:window], body[window:]
            self.conn.send_data(stream_id, chunk, end_stream=not body)
            self._flush()
            # The peer may open both windows again for it: two WINDOW_UPDATEs, not a flood.
            self._control_budget = min(float(CONTROL_FRAME_BURST), self._control_budget + 2)

    async def _window_opened(self, stream_id: int) -> bool:
        """Wait for the peer to open the stream's window; False if it has not within
        request_timeout: a peer that never does must not hold the stream, its task and
        the connection forever (an HTTP/2 slow read), so the stream is reset CANCEL."""
        waiter = asyncio.get_running_loop().create_future()
        self._window_waiters[stream_id] = waiter
        try:
            async with asyncio.timeout(self.context.request_timeout):
                await waiter
            return True
        except TimeoutError:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
            self._flush()
            self._stream_gone(stream_id)
            return False
        finally:
            self._window_waiters.pop(stream_id, None)

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
            self._forget(stream_id, stream)  # its buffers go now, not when the task runs
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
        if self._writing_paused or len(self._push_tasks) >= MAX_CONCURRENT_STREAMS:
            return False  # the peer is not reading: the message stays stored for later
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

    async def confirm_received(self, timeout: float) -> bool:
        """Whether the peer answers a PING sent after every push under way has been
        written: HTTP/2 frames arrive in order, so it has read them all (a receipt pushed
        and then lost with its connection is sent again, not forgotten)."""
        if self._closed:
            return False
        data = b""
        try:
            async with asyncio.timeout(timeout):
                under_way = [task for task in self._push_tasks if not task.done()]
                if under_way:
                    await asyncio.wait(under_way)
                if self._closed:
                    return False
                self._pings_sent += 1
                data = self._pings_sent.to_bytes(8, "big")
                answered = asyncio.get_running_loop().create_future()
                self._ping_waiters[data] = answered
                self.conn.ping(data)
                self._flush()
                return bool(await answered)
        except TimeoutError:
            return False
        finally:
            self._ping_waiters.pop(data, None)

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
