"""A WebSocket connection (RFC 6455), server side: the asyncio glue around the codec.

Frames are read and written by `websocket_frames` (sans-I/O); this module feeds it the
bytes that arrive, hands text messages to the session in order, answers pings and
closes, and keeps a slow or flooding client from costing memory. The codec's names
are importable from here too, where they used to live.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from tidings.service.http import websocket_frames
from tidings.service.http.admission import ConnectionAdmission, Slot
from tidings.service.http.app import TextChannel, WebSocketHandler
from tidings.service.http.context import WRITE_BUFFER_LIMIT  # a client not reading, as HTTP's
from tidings.service.http.logsafe import escape
from tidings.service.http.websocket_frames import *  # noqa: F403 (the codec's names, kept here)
from tidings.service.http.websocket_frames import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameError,
    FrameParser,
    Message,
    Ping,
    close_frame,
    close_reply,
    encode_frame,
)

# The codec's names stay importable from here, where they lived before the split.
__all__ = ["MAX_QUEUED_FRAMES", "WRITE_BUFFER_LIMIT", "PushWebSocket", "WebSocketConnection"]
__all__ += websocket_frames.__all__

log = logging.getLogger("tidings.websocket")

MAX_QUEUED_FRAMES = 32  # frames received but not yet handled before reading pauses


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket: frames in, text messages to its handler (app.py) in order."""

    # A node holds hundreds of thousands of these, idle: no per-instance dict.
    __slots__ = (
        "_admission", "_busy", "_closing", "_failed", "_hello_timer", "_inbox", "_lost",
        "_reading_paused", "_worker", "parser", "session", "slot", "transport",
    )  # fmt: skip

    def __init__(
        self,
        transport: asyncio.Transport,
        open_handler: Callable[[TextChannel, str], WebSocketHandler],
        client: str,
        *,
        max_message: int,
        hello_timeout: float,
        busy: set[object] | None = None,
        admission: ConnectionAdmission | None = None,
        slot: Slot | None = None,
    ) -> None:
        self.transport = transport
        # Its count in the connection caps (from the HTTP/1.1 connection it upgraded).
        self._admission = admission
        self.slot = slot
        self.session = open_handler(self, client)
        # The connections whose frames are being handled: shutdown waits for them
        # before it closes the store, so an ack that arrived is not lost.
        self._busy = busy if busy is not None else set()
        self.parser = FrameParser(max_message)
        # Frames waiting for the worker; a deque only while there are some (an empty
        # deque is 760 bytes, more than the rest of an idle connection's own objects).
        self._inbox: deque[str] | None = None
        self._reading_paused = False
        self._worker: asyncio.Task[None] | None = None
        self._closing = False  # no more frames are read
        self._failed = False  # closed by the service: frames still queued are dropped
        self._lost = False
        loop = asyncio.get_running_loop()
        self._hello_timer: asyncio.TimerHandle | None = loop.call_later(
            hello_timeout, self._hello_expired
        )

    # The handler's channel (TextChannel) -----------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send one text message (TextChannel)."""
        self.send_text_nowait(text)

    def send_text_nowait(self, text: str) -> None:
        """Send one text message now: writing to the transport never waits."""
        if self._closing or self.transport.is_closing():
            raise ConnectionError("connection closed")
        if not self._write(encode_frame(OP_TEXT, text.encode())):
            raise ConnectionError("client is not reading")

    def _write(self, frame: bytes) -> bool:
        """Write a frame unless the peer has left over `WRITE_BUFFER_LIMIT` unread."""
        if self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            # A close frame would wait behind what it never read: drop the connection
            # (and the buffer) now. Its messages stay stored for the next connection.
            log.info("dropping %s: not reading", escape(self.session.peer))
            self._failed = self._closing = True
            self.transport.abort()
            return False
        self.transport.write(frame)
        return True

    async def close(self, code: int, reason: str) -> None:
        """Close with a code (TextChannel)."""
        self.fail(code, reason)

    def fail(self, code: int, reason: str) -> None:
        """Send a close frame and close the TCP connection."""
        self._failed = True
        if self._closing:
            return
        self._closing = True
        if not self.transport.is_closing():
            self.transport.write(close_frame(code, reason))
            self.transport.close()

    # asyncio.Protocol ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.parser.feed(data)
        except FrameError as exc:
            log.info("closing %s: %s", escape(self.session.peer), escape(exc.reason))
            self.fail(exc.code, exc.reason)
            return
        for event in events:
            if isinstance(event, Message):
                if event.text is None:
                    self.fail(CLOSE_UNSUPPORTED_DATA, "only text frames are accepted")
                    return
                if not self._inbox and self._worker is None and self.session.handle_now(event.text):
                    continue  # an ack, handled in order: nothing was waiting before it
                if self._inbox is None:
                    self._inbox = deque()
                self._inbox.append(event.text)
            elif isinstance(event, Ping):
                if not self._write(encode_frame(OP_PONG, event.payload)):
                    return  # pongs count against the same unread cap as messages
            elif isinstance(event, Close):
                self._answer_close(event)
                break  # frames that came before the close are still handled
        if self._inbox is None:
            return
        if len(self._inbox) >= MAX_QUEUED_FRAMES and not self._reading_paused:
            # A client sending faster than its frames are handled waits in its own
            # socket buffer, not in our memory.
            self._reading_paused = True
            self.transport.pause_reading()
        if self._inbox and self._worker is None:
            self._worker = asyncio.ensure_future(self._work())
            self._busy.add(self)

    def _answer_close(self, event: Close) -> None:
        self._closing = True
        if not self.transport.is_closing():
            self.transport.write(close_reply(event))
            self.transport.close()

    async def _work(self) -> None:
        try:
            while self._inbox and not self._failed:
                if self._closing and not self.session.greeted:
                    break  # the peer left before its hello: nothing it sent matters
                text = self._inbox.popleft()
                try:
                    await self.session.on_text(text)
                except FrameError as exc:
                    log.info("closing %s: %s", escape(self.session.peer), escape(exc.reason))
                    self.fail(exc.code, exc.reason)
                    return
                except Exception:
                    log.exception("error handling a frame from %s", escape(self.session.peer))
                    self.fail(CLOSE_INTERNAL_ERROR, "internal error")
                    return
                if self.session.greeted and self._hello_timer is not None:
                    self._hello_timer.cancel()
                    self._hello_timer = None
                if self._reading_paused and len(self._inbox) <= MAX_QUEUED_FRAMES // 2:
                    self._reading_paused = False
                    if not self.transport.is_closing():
                        self.transport.resume_reading()
        finally:
            self._worker = None
            if not self._inbox:
                self._inbox = None
            self._busy.discard(self)
            if self._lost:
                self.session.on_disconnect()

    def _hello_expired(self) -> None:
        self._hello_timer = None
        if not self.session.greeted:
            self.fail(CLOSE_POLICY_VIOLATION, "no hello within the time allowed")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._lost = True
        if self.slot is not None and self._admission is not None:
            self._admission.close(self.slot)
            self.slot = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._worker is None:
            self.session.on_disconnect()
        # else the worker handles what arrived before the end (an ack right before a
        # close must count), then calls on_disconnect itself.


PushWebSocket = WebSocketConnection
"""The former name, from when the connection made the push service's session itself."""
