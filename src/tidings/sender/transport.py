"""HTTP transports for push requests: the seam between `Sender` and the network.

`PooledTransport` (the default) keeps, per push-service origin, either one multiplexed
HTTP/2 connection (when TLS ALPN picks "h2", or with `h2c=True` on cleartext) or a pool
of HTTP/1.1 keep-alive connections. HTTP/1.1 is a small hand-written client (a push
answer is a status line, a few headers and a short body); HTTP/2 framing is done by the
`h2` state machine. `HttpxTransport` does the same through httpx, for those who want its
proxies or event hooks; it costs several times more CPU per request (see docs/sender.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

__all__ = [
    "HttpxTransport",
    "PooledTransport",
    "Response",
    "Transport",
    "TransportError",
    "VerifyOption",
    "make_ssl_context",
]

VerifyOption = bool | str | ssl.SSLContext
_P = TypeVar("_P", bound=asyncio.Protocol)
_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


@dataclass(slots=True)
class Response:
    """A push service's answer: status, headers (lower-case names), body, protocol."""

    status: int
    headers: dict[str, str]
    body: bytes
    http_version: str


class TransportError(Exception):
    """No usable HTTP answer: connect, TLS, reset, protocol error or timeout."""

    def __init__(self, message: str, *, safe_to_retry: bool = True) -> None:
        super().__init__(message)
        self.safe_to_retry = safe_to_retry
        """False when the request may have reached the service (a retry may duplicate it)."""


class Transport(Protocol):
    """What `Sender` needs from HTTP: one request, and closing."""

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Send one request and return the complete answer, or raise TransportError."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


def make_ssl_context(verify: VerifyOption = True, *, http2: bool = True) -> ssl.SSLContext:
    """A client TLS context: system CAs (True), none (False), a CA file path, or yours."""
    if isinstance(verify, ssl.SSLContext):
        ctx = verify
    elif verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif verify is True:
        ctx = ssl.create_default_context()
    elif isinstance(verify, str):
        ctx = ssl.create_default_context(cafile=verify)
    else:
        raise TypeError(f"verify must be a bool, a CA file path or an SSLContext, not {verify!r}")
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return ctx


# --------------------------------------------------------------------------- HTTP/1.1


class _H1Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time, minimal parser."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._got_bytes = False
        self._head: tuple[int, str, dict[str, str]] | None = None
        self._remaining = -1  # body bytes still expected; -1 read-to-close; -2 chunked
        self._body = bytearray()
        self._chunk_left = 0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._head is not None and self._remaining == -1:
                self._finish()  # body delimited by the close
                return
            detail = f": {exc}" if exc else ""
            waiter.set_exception(
                TransportError(
                    f"connection closed before the answer{detail}",
                    safe_to_retry=not self._got_bytes,
                )
            )

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(f"malformed HTTP/1.1 answer: {exc}")

    # request side
    async def request(
        self, head: bytes, body: bytes, expiry: _Expiry | None = None, deadline: float = 0.0
    ) -> Response:
        """Write one request and wait for its complete answer.

        With `expiry`, the answer must come by `deadline` (loop time), else TimeoutError.
        """
        transport = self.transport
        if self.closed or transport is None:
            raise TransportError("connection is closed")
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._got_bytes = False
        self._head = None
        self._body = bytearray()
        if len(body) < 65536:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        if expiry is not None:
            expiry.add(self, deadline)
        try:
            return await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                self.close()  # a late answer must not be read as the next request's
            raise
        finally:
            self._waiter = None
            if expiry is not None:
                expiry.deadlines.pop(self, None)

    def expire(self) -> None:
        """The answer is overdue: drop the connection and fail the request (TimeoutError)."""
        waiter = self._waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def close(self) -> None:
        """Drop the connection."""
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # parsing
    def _fail(self, message: str) -> None:
        waiter = self._waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(TransportError(message, safe_to_retry=False))

    def _parse(self) -> None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail("answer headers too long")
                return
            status_line, _, rest = buf[:end].decode("latin-1").partition("\r\n")
            del buf[: end + 4]
            version, _, reason = status_line.partition(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(f"bad status line {status_line[:80]!r}")
            status = int(reason[:3])
            headers: dict[str, str] = {}
            for line in rest.split("\r\n") if rest else ():
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"bad header line {line[:80]!r}")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if 100 <= status < 200:  # 100 Continue and friends: skip, read the real answer
                self._parse()
                return
            self._head = (status, version, headers)
            connection = headers.get("connection")
            if connection is not None:
                connection = connection.lower()
                if "close" in connection:
                    self.reusable = False
            if version == "HTTP/1.0" and "keep-alive" not in (connection or ""):
                self.reusable = False
            if status == 204 or status == 304:
                self._remaining = 0
            elif (
                "transfer-encoding" in headers and "chunked" in headers["transfer-encoding"].lower()
            ):
                self._remaining = -2
                self._chunk_left = 0
            elif "content-length" in headers:
                self._remaining = int(headers["content-length"].split(",")[0])
                if self._remaining > _MAX_BODY:
                    self._fail("answer body too large")
                    return
            else:
                self._remaining = -1
                self.reusable = False
        remaining = self._remaining
        if remaining >= 0:
            if len(buf) >= remaining:
                if remaining:
                    self._body += buf[:remaining]
                    del buf[:remaining]
                self._finish()
        elif self._remaining == -2:
            self._parse_chunks()
        else:
            self._body += buf
            buf.clear()
            if len(self._body) > _MAX_BODY:
                self._fail("answer body too large")

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._chunk_left > 0:
                if len(buf) < self._chunk_left + 2:
                    return
                self._body += buf[: self._chunk_left]
                del buf[: self._chunk_left + 2]
                self._chunk_left = 0
                if len(self._body) > _MAX_BODY:
                    self._fail("answer body too large")
                    return
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";")[0].strip() or b"x", 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if buf[line_end : line_end + 4] == b"\r\n\r\n" or trailer_end >= 0:
                    del buf[:]
                    self._finish()
                return
            del buf[: line_end + 2]
            self._chunk_left = size

    def _finish(self) -> None:
        assert self._head is not None
        status, version, headers = self._head
        waiter = self._waiter
        if self._buf:
            self.reusable = False  # bytes nobody asked for: do not trust this connection
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, headers, bytes(self._body), version))
        self._head = None


class _Expiry:
    """Deadlines of the HTTP/1.1 requests in flight to one origin, kept by one timer.

    `asyncio.timeout` arms and cancels a timer for every request (4.6 µs with uvloop, 3 %
    of a fan-out message's CPU). Here a request only records its deadline, and a single
    timer, set for the earliest one, expires what is overdue when it fires, then sets
    itself for the earliest deadline left.
    """

    _EARLY = 0.001
    """Timers may fire up to a clock tick early: a deadline this close counts as passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadlines: dict[_H1Connection, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf

    def add(self, conn: _H1Connection, deadline: float) -> None:
        self.deadlines[conn] = deadline
        if deadline < self._when:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._when = math.inf
        now = self.loop.time() + self._EARLY
        overdue = [conn for conn, deadline in self.deadlines.items() if deadline <= now]
        for conn in overdue:
            del self.deadlines[conn]
            conn.expire()
        if self.deadlines:
            self._arm(min(self.deadlines.values()))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = math.inf


# --------------------------------------------------------------------------- HTTP/2


class _H2Stream:
    __slots__ = ("body", "future", "headers", "pending", "status")

    def __init__(self, future: asyncio.Future[Response], body: bytes) -> None:
        self.future = future
        self.pending = memoryview(body)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


class _H2Connection(asyncio.Protocol):
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
        self.streams: dict[int, _H2Stream] = {}
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
            self.transport.write(data)

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

    def _send_body(self, stream_id: int, stream: _H2Stream) -> None:
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
        stream = _H2Stream(future, body)
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


# --------------------------------------------------------------------------- pools


class _OriginPool:
    """Connections to one origin: one HTTP/2 connection, or many HTTP/1.1 ones."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        connect_timeout: float,
        h2c: bool,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        default_port = 443 if scheme == "https" else 80
        host_text = f"[{host}]" if ":" in host else host
        self.authority = host_text if port == default_port else f"{host_text}:{port}"
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.protocol: str | None = "h2" if (scheme == "http" and h2c) else None
        if scheme == "http" and not h2c:
            self.protocol = "http/1.1"
        self.h2: _H2Connection | None = None
        self._h2_opening: asyncio.Future[None] | None = None
        self.idle: deque[_H1Connection] = deque()
        self.h1_count = 0
        self._h1_waiters: deque[asyncio.Future[None]] = deque()
        self._expiry: _Expiry | None = None

    async def _connect(self, factory: Callable[[], _P]) -> _P:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    factory,
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except TimeoutError:
            raise TransportError(
                f"connecting to {self.scheme}://{self.authority} timed out"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(
                f"cannot connect to {self.scheme}://{self.authority}: {exc}"
            ) from None
        return protocol

    async def _open_first(self) -> None:
        """Open the first TLS connection and learn from ALPN which protocol to use."""

        class _Either(asyncio.Protocol):
            transport: asyncio.Transport | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)

            def connection_lost(self, exc: Exception | None) -> None:
                self.transport = None

        probe = await self._connect(_Either)
        transport = probe.transport
        if transport is None:
            raise TransportError(f"{self.scheme}://{self.authority} closed the connection")
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            conn: asyncio.Protocol = _H2Connection(self.authority, self.scheme)
            self.protocol = "h2"
        else:
            conn = _H1Connection()
            self.protocol = "http/1.1"
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if isinstance(conn, _H2Connection):
            self.h2 = conn
        else:
            assert isinstance(conn, _H1Connection)
            self.h1_count += 1
            self.idle.append(conn)

    async def _ensure_protocol(self) -> None:
        while self.protocol is None:
            if self._h2_opening is not None:
                await asyncio.shield(self._h2_opening)
                continue
            self._h2_opening = asyncio.get_running_loop().create_future()
            try:
                await self._open_first()
            finally:
                opening, self._h2_opening = self._h2_opening, None
                if not opening.done():
                    opening.set_result(None)

    async def _h2_connection(self) -> _H2Connection:
        while self.h2 is None or not self.h2.usable:
            if self._h2_opening is not None:
                await asyncio.shield(self._h2_opening)
                continue
            self._h2_opening = asyncio.get_running_loop().create_future()
            try:
                self.h2 = await self._connect(lambda: _H2Connection(self.authority, self.scheme))
            finally:
                opening, self._h2_opening = self._h2_opening, None
                if not opening.done():
                    opening.set_result(None)
        return self.h2

    async def _h1_acquire(self) -> tuple[_H1Connection, bool]:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn, True
                self.h1_count -= 1
            if self.h1_count < self.max_connections:
                self.h1_count += 1
                try:
                    conn = await self._connect(_H1Connection)
                except BaseException:
                    self.h1_count -= 1
                    self._h1_wake()
                    raise
                return conn, False
            waiter = asyncio.get_running_loop().create_future()
            self._h1_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                raise

    def _h1_release(self, conn: _H1Connection) -> None:
        if conn.reusable and not conn.closed:
            self.idle.append(conn)
        else:
            conn.close()
            self.h1_count -= 1
        self._h1_wake()

    def _h1_wake(self) -> None:
        while self._h1_waiters:
            waiter = self._h1_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None = None,
    ) -> Response:
        """One exchange; with `timeout`, TimeoutError when it takes longer (seconds)."""
        if timeout is None:
            return await self._request(method, path, headers, body)
        if self.protocol == "http/1.1" and self.idle:
            # The common case in a fan-out: a kept-alive connection is waiting.
            return await self._h1_request_by(
                self._h1_head(method, path, headers, len(body)), body, timeout
            )
        async with asyncio.timeout(timeout):
            return await self._request(method, path, headers, body)

    async def _request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        await self._ensure_protocol()
        if self.protocol == "h2":
            conn2 = await self._h2_connection()
            return await conn2.request(method, path, headers, body)
        return await self._h1_exchange(self._h1_head(method, path, headers, len(body)), body)

    async def _h1_request_by(self, head: bytes, body: bytes, timeout: float) -> Response:
        """The exchange on an idle connection, its deadline kept by `_Expiry`, not a timer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        expiry = self._expiry
        if expiry is None or expiry.loop is not loop:
            expiry = self._expiry = _Expiry(loop)
        conn = self.idle.pop()
        if conn.closed:
            self.h1_count -= 1
        else:
            try:
                return await conn.request(head, body, expiry, deadline)
            except TransportError as exc:
                conn.reusable = False
                if not exc.safe_to_retry:
                    raise
                # A kept-alive connection the service had already closed: go on below.
            finally:
                self._h1_release(conn)
        async with asyncio.timeout_at(deadline):
            return await self._h1_exchange(head, body)

    async def _h1_exchange(self, head: bytes, body: bytes) -> Response:
        for _ in range(2):
            conn, reused = await self._h1_acquire()
            try:
                return await conn.request(head, body)
            except TransportError as exc:
                conn.reusable = False
                if not (reused and exc.safe_to_retry):
                    raise
                # A kept-alive connection the service had already closed: once more, fresh.
            finally:
                self._h1_release(conn)
        raise TransportError("connection closed before the answer")  # pragma: no cover

    def _h1_head(self, method: str, path: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"{method} {path} HTTP/1.1\r\nHost: {self.authority}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        lines.append(f"Content-Length: {length}\r\n\r\n")
        return "".join(lines).encode("latin-1")

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.close()
        if self.h2 is not None:
            self.h2.close()
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class PooledTransport:
    """Tidings' own transport: HTTP/2 where the service offers it, HTTP/1.1 keep-alive else."""

    def __init__(
        self,
        *,
        verify: VerifyOption = True,
        http2: bool = True,
        h2c: bool = False,
        max_connections_per_origin: int = 100,
        connect_timeout: float = 10.0,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self._ssl = make_ssl_context(verify, http2=http2)
        self._h2c = h2c
        self._max = max_connections_per_origin
        self._connect_timeout = connect_timeout
        self._pools: dict[tuple[str, str, int], _OriginPool] = {}
        self._by_prefix: dict[str, _OriginPool] = {}
        self._closed = False

    def _pool_for(self, url: str) -> tuple[_OriginPool, str]:
        cut = url.find("/", url.find("//") + 2)
        if cut > 0:
            pool = self._by_prefix.get(url[:cut])
            if pool is not None and "?" not in url and "#" not in url:
                return pool, url[cut:]
        pool, path = self._parse_pool(url)
        if cut > 0 and len(self._by_prefix) < 10000:
            self._by_prefix[url[:cut]] = pool
        return pool, path

    def _parse_pool(self, url: str) -> tuple[_OriginPool, str]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise TransportError(
                f"bad push endpoint URL {url!r}: {exc}", safe_to_retry=False
            ) from None
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in ("http", "https") or not host:
            raise TransportError(
                f"push endpoint must be an http(s) URL: {url!r}", safe_to_retry=False
            )
        if port is None:
            port = 443 if scheme == "https" else 80
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _OriginPool(
                scheme,
                host,
                port,
                ssl_context=self._ssl if scheme == "https" else None,
                max_connections=self._max,
                connect_timeout=self._connect_timeout,
                h2c=self._h2c,
            )
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return pool, path

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout: float | None = None,
    ) -> Response:
        """Send one request on a pooled connection to the URL's origin.

        `timeout` (seconds) bounds the whole exchange: TimeoutError when it runs out.
        """
        if self._closed:
            raise TransportError("transport is closed", safe_to_retry=False)
        pool, path = self._pool_for(url)
        return await pool.request(method, path, headers, body, timeout)

    def protocol_of(self, url: str) -> str | None:
        """ "h2" or "http/1.1" once known for the URL's origin, else None."""
        pool, _ = self._pool_for(url)
        return pool.protocol

    async def aclose(self) -> None:
        """Close every pooled connection."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._by_prefix.clear()
        await asyncio.sleep(0)


class HttpxTransport:
    """The same seam over `httpx.AsyncClient(http2=True)`: ALPN, pooling, proxies."""

    def __init__(
        self,
        *,
        verify: VerifyOption = True,
        http2: bool = True,
        max_connections_per_origin: int = 100,
        connect_timeout: float = 10.0,
        client: Any = None,
    ) -> None:
        import httpx

        self._httpx = httpx
        if client is None:
            client = httpx.AsyncClient(
                http2=http2,
                verify=make_ssl_context(verify, http2=http2),
                limits=httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=max_connections_per_origin,
                ),
                timeout=httpx.Timeout(None, connect=connect_timeout),
            )
        self.client = client

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Send one request through httpx."""
        httpx = self._httpx
        try:
            answer = await self.client.request(method, url, headers=dict(headers), content=body)
        except httpx.ConnectError as exc:
            raise TransportError(f"cannot connect: {exc}") from None
        except httpx.TransportError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", safe_to_retry=False) from None
        headers_out: dict[str, str] = {}
        for name, value in answer.headers.multi_items():
            key = name.lower()
            headers_out[key] = f"{headers_out[key]}, {value}" if key in headers_out else value
        return Response(answer.status_code, headers_out, answer.content, answer.http_version)

    async def aclose(self) -> None:
        """Close the httpx client."""
        await self.client.aclose()
