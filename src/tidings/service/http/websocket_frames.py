"""WebSocket (RFC 6455) frames, server side, without I/O: bytes in, events out.

Only what a push service needs: text messages from a browser, pings, close. The codec
is written here rather than taken from wsproto so that an idle connection costs a few
hundred bytes of state; the rules it enforces are the RFC's (client frames masked,
control frames short and unfragmented, reserved bits clear, text valid UTF-8, a size
limit per message). `FrameParser` reads client frames; `encode_frame`, `close_frame`
and `close_reply` write the server's. The connection around it is `websocket.py`.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNSUPPORTED_DATA",
    "MAX_FRAGMENTS",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "Event",
    "FrameError",
    "FrameParser",
    "Message",
    "Ping",
    "accept_key",
    "close_frame",
    "close_reply",
    "encode_frame",
    "is_valid_client_key",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

MAX_FRAGMENTS = 64  # frames of one fragmented message (empty ones count too)


class FrameError(Exception):
    """The peer broke the protocol (RFC 6455, or the one spoken over it); close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Message(NamedTuple):
    """A complete data message (text or binary). A tuple: one is made per client frame,
    and a frozen dataclass set each field through `object.__setattr__`."""

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


def close_reply(event: Close) -> bytes:
    """The close frame answering the peer's: its code echoed, unless no endpoint may send it."""
    code = event.code if event.code is not None else CLOSE_NORMAL
    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000:
        code = CLOSE_PROTOCOL_ERROR
    return close_frame(code)


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
            raise FrameError(CLOSE_TOO_BIG, "frame too large")
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
            raise FrameError(CLOSE_TOO_BIG, "message too large")
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
                raise FrameError(CLOSE_TOO_BIG, "message too large")
            if len(self._fragments) >= MAX_FRAGMENTS:
                # Zero-length continuations add no bytes but cost a list entry and a
                # parse each: a message comes in at most this many pieces.
                raise FrameError(CLOSE_POLICY_VIOLATION, "too many fragments")
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
            raise FrameError(CLOSE_INVALID_PAYLOAD, "text frame is not UTF-8") from None


def _close_event(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = struct.unpack_from("!H", payload)[0]
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return Close(code, reason)
