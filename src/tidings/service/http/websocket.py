"""WebSocket (RFC 6455), server side: the handshake, frames, and the connection.

Only what a push service needs: text messages from a browser, pings, close. The frame
codec is written here rather than taken from wsproto so that an idle connection costs
a few hundred bytes of state; the rules it enforces are the RFC's (client frames
masked, control frames short and unfragmented, reserved bits clear, text valid UTF-8,
a size limit per message).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
from collections import deque
from dataclasses import dataclass

from tidings.service import ws_protocol as wp
from tidings.service.core import PushService
from tidings.service.logs import escape
from tidings.service.store import StoreUnavailable
from tidings.service.ws_session import WebSocketSession

log = logging.getLogger("tidings.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
CLOSE_PROTOCOL_ERROR = 1002
WRITE_BUFFER_LIMIT = 1 << 20  # a client that lets this much pile up is not reading
MAX_QUEUED_FRAMES = 32  # frames received but not yet handled before reading pauses
MAX_FRAGMENTS = 64  # frames of one fragmented message (empty ones count too)


class FrameError(Exception):
    """The peer broke RFC 6455; close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message (text or binary)."""

    text: str | None
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int | None
    reason: str


Event = Message | Ping | Close


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()  # noqa: S324


def is_valid_client_key(key: str) -> bool:
    """A Sec-WebSocket-Key is base64 of 16 bytes."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _unmask(payload: bytes, mask: bytes) -> bytes:
    length = len(payload)
    if not length:
        return payload
    repeated = (mask * (length // 4 + 1))[:length]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(length, "little")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame from the server."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with a code and a reason cut to fit a control frame."""
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:123])


class FrameParser:
    """Client frames in, events out. Keeps only the unparsed bytes between calls."""

    __slots__ = ("_buffer", "_fragment_opcode", "_fragment_size", "_fragments", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[Event]:
        """Parse what arrived; raise FrameError on a protocol violation."""
        buffer = self._buffer + data if self._buffer else data
        events: list[Event] = []
        offset = 0
        while True:
            parsed = self._parse_one(buffer, offset)
            if parsed is None:
                break
            offset, event = parsed
            if event is not None:
                events.append(event)
        self._buffer = buffer[offset:]
        if len(self._buffer) > self.max_message + 14:
            raise FrameError(wp.CLOSE_TOO_BIG, "frame too large")
        return events

    def _parse_one(self, buf: bytes, pos: int) -> tuple[int, Event | None] | None:
        if len(buf) - pos < 2:
            return None
        first, second = buf[pos], buf[pos + 1]
        fin, opcode = first & 0x80, first & 0x0F
        if first & 0x70:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
        if not second & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        length = second & 0x7F
        head = 2
        if length == 126:
            if len(buf) - pos < 4:
                return None
            length = struct.unpack_from("!H", buf, pos + 2)[0]
            head = 4
        elif length == 127:
            if len(buf) - pos < 10:
                return None
            length = struct.unpack_from("!Q", buf, pos + 2)[0]
            head = 10
        if length > self.max_message:
            raise FrameError(wp.CLOSE_TOO_BIG, "message too large")
        end = pos + head + 4 + length
        if len(buf) < end:
            return None
        mask = buf[pos + head : pos + head + 4]
        payload = _unmask(buf[pos + head + 4 : end], mask)
        return end, self._event(fin != 0, opcode, payload)

    def _event(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode >= 0x8:
            if not fin or len(payload) > 125:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "bad control frame")
            if opcode == OP_PING:
                return Ping(payload)
            if opcode == OP_PONG:
                return None
            if opcode == OP_CLOSE:
                return _close_event(payload)
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation without a first frame")
            self._fragment_size += len(payload)
            if self._fragment_size > self.max_message:
                raise FrameError(wp.CLOSE_TOO_BIG, "message too large")
            if len(self._fragments) >= MAX_FRAGMENTS:
                # Zero-length continuations add no bytes but cost a list entry and a
                # parse each: a message comes in at most this many pieces.
                raise FrameError(wp.CLOSE_POLICY_VIOLATION, "too many fragments")
            self._fragments.append(payload)
            if not fin:
                return None
            payload, opcode = b"".join(self._fragments), self._fragment_opcode
            self._fragments = None
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if not fin:
                self._fragments, self._fragment_opcode = [payload], opcode
                self._fragment_size = len(payload)
                return None
        else:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == OP_BINARY:
            return Message(None, payload)
        try:
            return Message(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise FrameError(wp.CLOSE_INVALID_PAYLOAD, "text frame is not UTF-8") from None


def _close_event(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = struct.unpack_from("!H", payload)[0]
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(wp.CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return Close(code, reason)


class PushWebSocket(asyncio.Protocol):
    """The push protocol over one WebSocket: frames in, `WebSocketSession` calls out."""

    def __init__(
        self,
        transport: asyncio.Transport,
        service: PushService,
        client: str,
        *,
        max_message: int,
        busy: set[PushWebSocket] | None = None,
    ) -> None:
        self.transport = transport
        self.session = WebSocketSession(service, self, client)
        # The connections whose frames are being handled: shutdown waits for them
        # before it closes the store, so an ack that arrived is not lost.
        self._busy = busy if busy is not None else set()
        hello_timeout = service.config.hello_timeout
        self.parser = FrameParser(max_message)
        self._inbox: deque[str] = deque()
        self._reading_paused = False
        self._worker: asyncio.Task[None] | None = None
        self._closing = False  # no more frames are read
        self._failed = False  # closed by the service: frames still queued are dropped
        self._lost = False
        loop = asyncio.get_running_loop()
        self._hello_timer: asyncio.TimerHandle | None = loop.call_later(
            hello_timeout, self._hello_expired
        )

    # The session's channel ---------------------------------------------------------------

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
                    self.fail(wp.CLOSE_UNSUPPORTED_DATA, "only text frames are accepted")
                    return
                if not self._inbox and self._worker is None and self.session.handle_now(event.text):
                    continue  # an ack, handled in order: nothing was waiting before it
                self._inbox.append(event.text)
            elif isinstance(event, Ping):
                if not self._write(encode_frame(OP_PONG, event.payload)):
                    return  # pongs count against the same unread cap as messages
            elif isinstance(event, Close):
                self._answer_close(event)
                break  # frames that came before the close are still handled
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
            code = event.code if event.code is not None else 1000
            if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000:
                code = CLOSE_PROTOCOL_ERROR
            self.transport.write(close_frame(code))
            self.transport.close()

    async def _work(self) -> None:
        try:
            while self._inbox and not self._failed:
                if self._closing and self.session.uaid is None:
                    break  # the peer left before its hello: nothing it sent matters
                text = self._inbox.popleft()
                try:
                    await self.session.on_text(text)
                except wp.FrameError as exc:
                    log.info("closing %s: %s", escape(self.session.peer), escape(exc.reason))
                    self.fail(exc.code, exc.reason)
                    return
                except StoreUnavailable as exc:
                    # The store is down or closing (shutdown): the client retries later.
                    log.warning("store unavailable for %s: %s", escape(self.session.peer), exc)
                    self.fail(wp.CLOSE_TRY_AGAIN_LATER, "service unavailable, try again later")
                    return
                except Exception:
                    log.exception("error handling a frame from %s", escape(self.session.peer))
                    self.fail(1011, "internal error")
                    return
                if self.session.uaid is not None and self._hello_timer is not None:
                    self._hello_timer.cancel()
                    self._hello_timer = None
                if self._reading_paused and len(self._inbox) <= MAX_QUEUED_FRAMES // 2:
                    self._reading_paused = False
                    if not self.transport.is_closing():
                        self.transport.resume_reading()
        finally:
            self._worker = None
            self._busy.discard(self)
            if self._lost:
                self.session.on_disconnect()

    def _hello_expired(self) -> None:
        self._hello_timer = None
        if self.session.uaid is None:
            self.fail(wp.CLOSE_POLICY_VIOLATION, "no hello within the time allowed")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._lost = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._worker is None:
            self.session.on_disconnect()
        # else the worker handles what arrived before the end (an ack right before a
        # close must count), then calls on_disconnect itself.
