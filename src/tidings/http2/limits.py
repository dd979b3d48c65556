"""What a hostile HTTP/2 server can make our clients (sender, user agent, receipt
monitors) hold: each bound here is one the server could otherwise grow without end.
Pushes a consumer has not taken yet are bounded by reading less (`ReadPause`).
The HPACK table's bound is the service's too, against a hostile client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import h2.connection

# Our HPACK encoder's table, whatever larger SETTINGS_HEADER_TABLE_SIZE the server allows
# (RFC 7541 section 4.2 lets an encoder use less): hpack keeps every header it may reuse
# and searches them linearly, so 2^31 would make each request slower than the last.
MAX_ENCODER_TABLE = 4096
# One response's body: answers are short JSON; a server sending without end is cut off.
MAX_RESPONSE_BODY = 1 << 20
# One pushed response's body: a push message (RFC 8030 section 7.2 asks for 4 KiB at least;
# our service's max_body is at most 64 KiB) or an empty receipt; a bigger one is refused.
MAX_PUSHED_BODY = 64 << 10
# Pushed streams promised and not yet complete on one connection; past it, refused.
MAX_OPEN_PROMISES = 1000


def cap_encoder_table(conn: h2.connection.H2Connection) -> None:
    """After the server's SETTINGS: keep our encoder's table within MAX_ENCODER_TABLE
    (the size update goes out at the start of the next header block)."""
    if conn.encoder.header_table_size > MAX_ENCODER_TABLE:
        conn.encoder.header_table_size = MAX_ENCODER_TABLE


# Bytes our client may have queued for a server that does not read: each PING or SETTINGS
# the server sends is answered, so a server flooding them and never reading grew our
# write buffer without end. Past it the connection is dropped.
MAX_UNSENT = 1 << 20


def write_bounded(transport: asyncio.WriteTransport, data: bytes) -> None:
    """Write `data`; abort the connection (its waiters fail in connection_lost) once
    more than MAX_UNSENT bytes wait for the server to read them."""
    transport.write(data)
    if transport.get_write_buffer_size() > MAX_UNSENT:
        transport.abort()


# Complete pushed responses waiting for their consumer, over all streams of a connection:
# 64 covers a burst of messages for a slow handler (64 x 4 KiB payloads, at most 4 MiB
# if a server sends MAX_PUSHED_BODY each); past it we stop reading the socket, so flow
# control and TCP hold the server back. Reading resumes once at most RESUME_QUEUED_PUSHES wait.
MAX_QUEUED_PUSHES = 64
RESUME_QUEUED_PUSHES = MAX_QUEUED_PUSHES // 4

T = TypeVar("T")


class ReadPause:
    """Whether a connection stopped reading because its consumer is behind.

    `within` waits for an answer (a PING's ACK, a pong) counting only the time spent
    reading: while paused the answer may sit among what we have not read yet, and a
    slow application is no sign of a dead connection.
    """

    def __init__(self) -> None:
        self._reading = asyncio.Event()
        self._reading.set()
        self.pauses = 0
        """How many times reading paused (a wait that saw it change was not all reading)."""

    @property
    def paused(self) -> bool:
        return not self._reading.is_set()

    def pause(self) -> bool:
        """Mark reading paused; True if it was not already."""
        if self.paused:
            return False
        self._reading.clear()
        self.pauses += 1
        return True

    def resume(self) -> bool:
        """Mark reading resumed (also on close: nobody waits for a dead connection); True
        if it was paused."""
        if not self.paused:
            return False
        self._reading.set()
        return True

    async def within(self, waiter: Awaitable[T], timeout: float | None) -> T:
        """`waiter`'s result; TimeoutError once it took `timeout` seconds of reading."""
        future = asyncio.ensure_future(waiter)
        try:
            while not future.done():
                if self.paused:  # the clock starts again once reading does
                    reading = asyncio.ensure_future(self._reading.wait())
                    try:
                        await asyncio.wait({future, reading}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        reading.cancel()
                    continue
                pauses = self.pauses
                await asyncio.wait({future}, timeout=timeout)
                if not future.done() and pauses == self.pauses:
                    raise TimeoutError
            return future.result()
        finally:
            future.cancel()
