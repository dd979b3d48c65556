"""HTTP/1.1 keep-alive connections for push requests: a small hand-written client.

A push answer is a status line, a few headers and a short body, so parsing it by hand
costs less than a general HTTP library; `Expiry` keeps the deadlines of all requests
in flight to one origin with one timer.
"""

from __future__ import annotations

import asyncio
import math
from typing import cast

from tidings.sender.transport.base import (
    MAX_BODY,
    MAX_HEAD,
    Response,
    TransportError,
)


class H1Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time, minimal parser."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # The connection's loop, asked once: asyncio.get_running_loop() makes a getpid()
        # system call on every call in CPython 3.11 (fork detection).
        self.loop: asyncio.AbstractEventLoop | None = None
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
        self.loop = asyncio.get_running_loop()

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
        try:
            if self._head is None and not self._buf:
                # The usual case: the whole head in one read, parsed from `data` itself
                # (no copy into the buffer and out again); only what follows it is kept.
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    if len(data) > end + 4:
                        self._buf += memoryview(data)[end + 4 :]
                    if self._read_head(data[:end]):
                        self._parse()
                    return
            self._buf += data
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(f"malformed HTTP/1.1 answer: {exc}")

    # request side
    async def request(
        self, head: bytes, body: bytes, expiry: Expiry | None = None, deadline: float = 0.0
    ) -> Response:
        """Write one request and wait for its complete answer.

        With `expiry`, the answer must come by `deadline` (loop time), else TimeoutError.
        """
        transport = self.transport
        loop = self.loop
        if self.closed or transport is None or loop is None:
            raise TransportError("connection is closed")
        waiter: asyncio.Future[Response] = loop.create_future()
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
                if len(buf) > MAX_HEAD:
                    self._fail("answer headers too long")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not self._read_head(head):
                return
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
            if len(self._body) > MAX_BODY:
                self._fail("answer body too large")

    def _read_head(self, head: bytes) -> bool:
        """Read an answer's head (its bytes up to the blank line) into `_head` and the body
        framing; False when there is no body to read yet (an interim 1xx answer, or the
        connection failed), True when `_parse` should go on to the body."""
        if len(head) > MAX_HEAD:
            self._fail("answer headers too long")
            return False
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0]
        version, _, reason = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"bad status line {status_line[:80]!r}")
        status = int(reason[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            # 100 Continue and friends: skip, read the real answer from what follows.
            if self._buf:
                self._parse()
            return False
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
        elif "transfer-encoding" in headers and "chunked" in headers["transfer-encoding"].lower():
            self._remaining = -2
            self._chunk_left = 0
        elif "content-length" in headers:
            self._remaining = int(headers["content-length"].split(",")[0])
            if self._remaining > MAX_BODY:
                self._fail("answer body too large")
                return False
        else:
            self._remaining = -1
            self.reusable = False
        return True

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._chunk_left > 0:
                if len(buf) < self._chunk_left + 2:
                    return
                self._body += buf[: self._chunk_left]
                del buf[: self._chunk_left + 2]
                self._chunk_left = 0
                if len(self._body) > MAX_BODY:
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
            body = bytes(self._body) if self._body else b""
            waiter.set_result(Response(status, headers, body, version))
        self._head = None


class Expiry:
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
        self.deadlines: dict[H1Connection, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf

    def add(self, conn: H1Connection, deadline: float) -> None:
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
