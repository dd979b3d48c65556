"""HTTP/1.1 connections (httptools parses), with the WebSocket upgrade and h2c detection.

Requests on one connection are answered in order, one at a time (pipelining works, it
is just not parallel). A connection that starts with the HTTP/2 preface is handed to
`Http2Connection` (cleartext HTTP/2 with prior knowledge, RFC 9113 section 3.3).
HTTP/1.0 and HTTP/1.1 are spoken; a higher 1.x minor (HTTP/1.2) is served as HTTP/1.1,
other majors are answered 505 (RFC 9110 section 2.5).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import cast

import httptools

from tidings.service.http.context import WRITE_BUFFER_LIMIT, ConnectionContext, Slot, peer_of
from tidings.service.http.messages import Request, Response, status_line
from tidings.service.http.websocket_frames import accept_key, is_valid_client_key

__all__ = ["H2_PREFACE", "MAX_HEADER_BYTES", "WRITE_BUFFER_LIMIT", "Http1Connection"]

log = logging.getLogger("tidings.http")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEADER_BYTES = 16 * 1024
MAX_QUEUED_REQUESTS = 16


class _BodyTooLarge(Exception):
    pass


class _BadHead(Exception):
    """A head that parses but that RFC 9112 says to refuse: 400 unless `status` says."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# What Transfer-Encoding may say: only chunked is implemented (RFC 9112 section 6.1).
_IMPLEMENTED_CODINGS = frozenset({"chunked"})


class Http1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection."""

    def __init__(self, context: ConnectionContext, *, slot: Slot | None = None) -> None:
        self.context = context
        # Its count in the connection caps: given back in connection_lost, or handed on
        # to the protocol this connection switches to.
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.parser = httptools.HttpRequestParser(self)
        # llhttp refuses any version but 0.9, 1.0, 1.1 and 2.0 while reading the request
        # line; this leniency (its only effect) lets it read any DIGIT.DIGIT, so that
        # on_headers_complete serves a higher 1.x minor as 1.1 (RFC 9110 section 2.5)
        # and answers other majors 505. Syntax and framing are llhttp's as before.
        self.parser.set_dangerous_leniencies(lenient_version=True)
        self._url = b""
        self._version = "1.1"  # the version the request is served as
        # The request line's parts, read once the headers are complete.
        self._method = "GET"
        self._path = "/"
        self._query = ""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        # After the head: fields now come from a chunked body's trailer section.
        self._in_trailer = False
        self._hosts = 0  # Host fields in the head
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_limit = 0
        self._too_large = False
        # Parsed requests, each with its answer when parsing already decided it, and
        # whether the client keeps the connection open after it.
        self._queue: deque[tuple[Request, Response | None, bool]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._first_data = True
        self._upgrade: Request | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the pending timer fires
        self._deadline = 0.0  # when the connection times out (may be later: re-armed then)
        self._closing = False
        self._loop = asyncio.get_running_loop()

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if self.slot is None:
            self.slot = self.context.admit(transport)
            if self.slot is None:
                self._closing = True  # refused: the process is at max_connections
                return
        self.client = peer_of(transport)
        self.context.connections.add(self)
        self._arm_timer(self.context.request_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.context.connections.discard(self)
        if self.slot is not None:
            self.context.admission.close(self.slot)
            self.slot = None
        if self._timer is not None:
            self._timer.cancel()
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._first_data:
            self._first_data = False
            if data.startswith(H2_PREFACE[: len(data)]) and data[:3] == b"PRI":
                self._switch_to_h2(data)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._start_upgrade(data[offset:])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _BodyTooLarge):
                self._reject(413, f"the body is over {self._body_limit} bytes")
            elif isinstance(exc.__context__, _BadHead):
                self._reject(exc.__context__.status, str(exc.__context__))
            elif isinstance(exc.__context__, httptools.HttpParserInvalidURLError):
                # parse_url in a callback refused the request target: bad syntax, 400.
                self._reject(400, "malformed request URL")
            elif isinstance(exc.__context__, httptools.HttpParserError):
                # Our own limit, raised in a callback (httptools reports "User callback error").
                self._reject(431, f"{exc.__context__}: at most {MAX_HEADER_BYTES} bytes")
            else:
                self._reject(400, f"malformed HTTP request: {exc}")

    # httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._in_trailer = False
        self._hosts = 0
        self._body = []
        self._body_size = 0
        self._too_large = False
        self._arm_timer(self.context.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # With its ": " and CRLF: many empty fields must not pass four times the limit.
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")
        if self._in_trailer:
            # Trailer fields are not header fields (RFC 9110 section 6.5.1): merged, they
            # would add a TTL or a hop to X-Forwarded-For that no proxy saw. None is used.
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "host":
            self._hosts += 1
        headers = self._headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self._in_trailer = True
        version = self.parser.get_http_version()  # DIGIT.DIGIT (RFC 9112 section 2.3)
        if version[:2] != "1.":
            # HTTP/2.0, HTTP/0.9 (or no version at all), HTTP/3.0: only 1.x is spoken here.
            raise _BadHead(f"HTTP/{version} is not supported: use HTTP/1.1 or HTTP/2", 505)
        if version != "1.0":
            # RFC 9110 section 2.5: a higher minor (HTTP/1.2) is served as HTTP/1.1, the
            # highest this server conforms to, with 1.1's Host, framing and keep-alive
            # rules (llhttp keeps a connection alive as for 1.1 for any minor over 0).
            version = "1.1"
        self._version = version
        if self._hosts > 1 or (self._hosts == 0 and version == "1.1"):
            # RFC 9112 section 3.2: exactly one Host in HTTP/1.1 (at most one before).
            raise _BadHead("an HTTP/1.1 request needs exactly one Host header")
        if "transfer-encoding" in self._headers:
            self._check_transfer_coding(self._headers["transfer-encoding"], version)
        # Parsed here once for both the body limit and the request.
        if self._url:
            url = httptools.parse_url(self._url)
            self._path = url.path.decode("latin-1")
            self._query = (url.query or b"").decode("latin-1")
        else:
            self._path, self._query = "/", ""
        self._method = method = self.parser.get_method().decode("latin-1")
        self._body_limit = self.context.app.body_limit(method, self._path)
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._body_limit:
            raise _BodyTooLarge  # answered at once, without waiting for the body
        # A client that sent `Expect: 100-continue` waits for this before sending the
        # body (curl for a second). Not while an earlier pipelined request is unanswered:
        # the interim answer would be taken for that request's.
        expect = self._headers.get("expect", "").strip().lower()
        idle = self._worker is None and not self._queue
        if expect == "100-continue" and idle and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    @staticmethod
    def _check_transfer_coding(value: str, version: str) -> None:
        """Refuse framing a proxy in front could read otherwise (request smuggling)."""
        if version == "1.0":
            # RFC 9112 section 6.1: an HTTP/1.0 message with it has faulty framing.
            raise _BadHead("Transfer-Encoding is not allowed in an HTTP/1.0 request")
        names = [coding.strip().lower() for coding in value.split(",")]
        if names[-1] != "chunked" or names.count("chunked") > 1:
            # RFC 9112 section 6.3: a request whose last coding is not chunked (one
            # chunked) has no reliable length: 400 whatever the codings, then close.
            raise _BadHead("Transfer-Encoding must end with one chunked")
        for name in names:
            if name not in _IMPLEMENTED_CODINGS:
                # llhttp passes `identity, chunked` and `gzip, chunked` as plain chunked.
                raise _BadHead(f"transfer coding {name[:40]!r} is not implemented", 501)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._body_limit:
            self._too_large = True
        if not self._too_large:
            self._body.append(body)
        elif self._body_size > self._body_limit * 4 + 65536:
            raise _BodyTooLarge  # stop reading a flood; a modest excess is drained politely

    def on_message_complete(self) -> None:
        request = Request(  # by position (keywords cost a dict a request)
            self._method,
            self._path,
            self._query,
            self._headers,
            b"".join(self._body),
            self.client,
            self._version,  # http_version
        )
        if self.parser.should_upgrade():
            self._upgrade = request
            return
        if self._too_large:
            ready: Response | None = self.context.app.too_large(request)
        elif self.slot is not None and self.slot.refused:
            ready = self.context.refusal()  # over its address's cap: answered, then closed
        else:
            ready = None
        # Read now: httptools forgets a `Connection: close` once the message is complete.
        self._queue.append((request, ready, self.parser.should_keep_alive()))
        if len(self._queue) > MAX_QUEUED_REQUESTS and self.transport is not None:
            self.transport.pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._work())

    # Answering ----------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while self._queue and not self._closing:
                request, ready, keep_alive = self._queue.popleft()
                keep_alive = keep_alive and not self.context.draining
                started = time.perf_counter()
                if ready is not None:  # refused while parsing: answer, then close
                    response = ready
                    keep_alive = False
                else:
                    response = await self.context.app.handle(request)
                self._write_response(request, response, keep_alive)
                self.context.log_request(request, response.status, started)
                if self.transport is not None and (
                    self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT
                ):
                    self.transport.abort()  # pipelining without reading the answers
                    return
                if not keep_alive:
                    self._close()
                    return
                if self.transport is not None and len(self._queue) <= MAX_QUEUED_REQUESTS:
                    self.transport.resume_reading()
                if self._queue:
                    # Let other connections in between pipelined requests: one client's
                    # pipeline must not hold up everyone else's pushes.
                    await asyncio.sleep(0)
        finally:
            self._worker = None
            if not self._closing:
                self._arm_timer(self.context.keepalive_timeout)

    def _write_response(self, request: Request, response: Response, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [status_line(response.status)]
        for name, value in response.headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(self.context.date_header())
        if response.status >= 200 and response.status not in (204, 304):
            lines.append(b"content-length: %d\r\n" % len(response.body))
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if request.method != "HEAD":
            lines.append(response.body)
        self.transport.write(b"".join(lines))

    def _reject(self, status: int, message: str) -> None:
        """Answer an unparseable request and close, after any request already queued."""
        self._answer_and_close(self.context.app.plain_error(status, message))

    def _answer_and_close(self, response: Response, request: Request | None = None) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
        if request is None:
            request = Request("-", "-", "", {}, b"", self.client)
        status = response.status
        if self._worker is not None or self._queue:
            self._queue.append((request, response, False))
            return
        self._write_response(request, response, keep_alive=False)
        self.context.log_request(request, status, time.perf_counter())
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close_if_idle(self) -> None:
        """Close the connection now unless a request is being answered (draining)."""
        if self._worker is None and not self._queue:
            self._close()

    def _arm_timer(self, delay: float) -> None:
        # Called twice per request: moving a deadline later only records it, and the
        # timer, when it fires, re-arms itself for what is left (no cancel, no new
        # timer per request).
        loop = self._loop
        self._deadline = deadline = loop.time() + delay
        if self._timer is not None:
            if deadline >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._deadline > self._timer_at:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._timed_out)
            return
        if self._worker is None and not self._closing:
            self._close()  # an idle keep-alive connection, or a request that never finished

    # Protocol switches --------------------------------------------------------------------

    def _start_upgrade(self, rest: bytes) -> None:
        request = self._upgrade
        self._upgrade = None
        if request is None or self.transport is None:
            self._reject(400, "bad upgrade")
            return
        if self.slot is not None and self.slot.refused:
            self._answer_and_close(self.context.refusal(), request)  # before the upgrade
            return
        if self._worker is not None or self._queue:
            self._reject(400, "upgrade while requests are pending")
            return
        if request.headers.get("upgrade", "").lower() != "websocket":
            self._reject(400, "only WebSocket upgrades are supported")
            return
        problem = self._websocket_problem(request)
        if problem is not None:
            status, message = problem
            self._reject(status, message)
            return
        # New connections are rate limited per address; the limiter may be remote (Redis).
        request.client = self.context.app.client_of(request)  # behind trusted proxies
        self.transport.pause_reading()
        self._worker = asyncio.ensure_future(self._upgrade_if_allowed(request, rest))

    async def _upgrade_if_allowed(self, request: Request, rest: bytes) -> None:
        refusal = await self.context.app.admit_websocket(request)
        self._worker = None
        if refusal is not None:
            if self.transport is not None and not self.transport.is_closing():
                self._write_response(request, refusal, keep_alive=False)
                self.context.log_request(request, refusal.status, time.perf_counter())
            self._close()
            return
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        self._complete_upgrade(request, rest)

    def _complete_upgrade(self, request: Request, rest: bytes) -> None:
        assert self.transport is not None
        headers = [
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"upgrade: websocket\r\n",
            b"connection: Upgrade\r\n",
            b"sec-websocket-accept: %s\r\n"
            % accept_key(request.headers["sec-websocket-key"]).encode(),
        ]
        # Firefox asks for the "push-notification" subprotocol; extensions such as
        # permessage-deflate are declined (frames are encrypted and incompressible).
        offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",")]
        if "push-notification" in offered:
            headers.append(b"sec-websocket-protocol: push-notification\r\n")
        headers.append(b"\r\n")
        self.transport.write(b"".join(headers))
        self.context.log_request(request, 101, time.perf_counter())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.context.connections.discard(self)
        self._closing = True
        protocol = self.context.make_websocket(self.transport, request.client, self.slot)
        self.slot = None
        self.transport.set_protocol(protocol)
        self.transport.resume_reading()
        if rest:
            protocol.data_received(rest)

    def _websocket_problem(self, request: Request) -> tuple[int, str] | None:
        if request.method != "GET":
            return 400, "a WebSocket handshake is a GET"
        if request.path != "/":
            return 404, "the WebSocket push endpoint is /"
        if self.context.draining:
            return 503, "the service is shutting down"
        if request.headers.get("sec-websocket-version") != "13":
            return 426, "WebSocket version 13 is required"
        key = request.headers.get("sec-websocket-key", "")
        if not is_valid_client_key(key):
            return 400, "missing or malformed Sec-WebSocket-Key"
        return None

    def _switch_to_h2(self, data: bytes) -> None:
        assert self.transport is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.context.connections.discard(self)
        self._closing = True
        protocol = self.context.make_http2(self.slot)
        self.slot = None
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(data)
