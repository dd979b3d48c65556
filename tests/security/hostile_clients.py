"""Raw clients for the hostile corpus: each sends bytes as given and says what came back.

Nothing here is a polite client: HTTP/1.1 requests are bytes, WebSocket frames are built
by hand (masked or not, any opcode, any length), HTTP/2 frames come from the `h2` library
with its own checks turned off where a case needs to break the protocol. What came back is
an `Outcome`, which a case's expectation judges (tests/security/test_hostile.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

DEADLINE = 15.0  # generous: "eventually" on a loaded 2-core machine


@dataclass
class Outcome:
    """What a hostile exchange ended with.

    kind: "http" (an HTTP answer: status, headers, body), "closed" (a WebSocket close frame
    with `code`, or the connection dropped: code None), "open" (the connection still
    answered a ping after the hostile input), "goaway" (HTTP/2 GOAWAY with `code`),
    "reset" (HTTP/2 RST_STREAM with `code`), "eof" (the server closed without a word).
    """

    kind: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    code: int | None = None
    frames: list[str] = field(default_factory=list)  # WebSocket text frames received
    settings: dict[int, int] = field(default_factory=dict)  # HTTP/2 server settings

    def json(self) -> dict[str, object]:
        document = json.loads(self.body)
        assert isinstance(document, dict), document
        return document


# HTTP/1.1 ---------------------------------------------------------------------------------


def http_request(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"", host: str = ""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host or '127.0.0.1'}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_http(reader: asyncio.StreamReader) -> Outcome:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    except asyncio.IncompleteReadError:
        return Outcome("eof")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), DEADLINE)
    return Outcome("http", status, headers, body)


async def send_http(port: int, data: bytes) -> Outcome:
    """Send `data` on a new connection; the first answer (skipping 100 Continue)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        outcome = await read_http(reader)
        while outcome.status == 100:
            outcome = await read_http(reader)
        return outcome
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# WebSocket ----------------------------------------------------------------------------------

MASK = b"\x37\xfa\x21\x3d"


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One client frame; `length` overrides the declared payload length."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def text(document: object) -> bytes:
    """A text frame holding `document` as JSON (or the string itself)."""
    data = document if isinstance(document, str) else json.dumps(document)
    return frame(0x1, data.encode())


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await reader.readexactly(size)


async def websocket_exchange(
    port: int, send: Callable[[], list[bytes]], hello: bool, probe_text: bool
) -> Outcome:
    """Open a WebSocket to the push service, optionally say hello, send the hostile bytes,
    then a probe: "open" if its answer comes back, "closed" with the code otherwise.

    The probe is a Ping frame (answered as soon as it is parsed: right for framing
    errors) or, with `probe_text`, the Firefox protocol's `{}` (answered in order after
    every message before it has been handled: right for the protocol's messages)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames: list[str] = []
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            http_request(
                "GET",
                "/",
                [
                    ("upgrade", "websocket"),
                    ("connection", "Upgrade"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", key),
                    ("sec-websocket-protocol", "push-notification"),
                ],
            )
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 101 "), head
        if hello:
            writer.write(text({"messageType": "hello", "use_webpush": True, "broadcasts": {}}))
            opcode, payload = await asyncio.wait_for(_read_frame(reader), DEADLINE)
            assert opcode == 0x1 and json.loads(payload)["messageType"] == "hello", payload
        for chunk in send():
            writer.write(chunk)
            await writer.drain()
        writer.write(text("{}") if probe_text else frame(0x9, b"still there?"))
        async with asyncio.timeout(DEADLINE):
            while True:
                try:
                    opcode, payload = await _read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return Outcome("closed", code=None, frames=frames)
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    return Outcome("closed", code=code, frames=frames)
                if opcode == 0xA and payload == b"still there?":
                    return Outcome("open", frames=frames)
                if opcode == 0x1 and probe_text and payload == b"{}":
                    return Outcome("open", frames=frames)
                if opcode == 0x1:
                    frames.append(payload.decode())
    except (ConnectionError, asyncio.IncompleteReadError):
        return Outcome("closed", code=None, frames=frames)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# HTTP/2 -------------------------------------------------------------------------------------


def h2_client() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    return conn


H2Script = Callable[[h2.connection.H2Connection], bytes]
"""Given a client connection that has sent its preface, the bytes to send after it."""


async def h2_exchange(port: int, script: H2Script, stream_id: int = 1) -> Outcome:
    """Prior-knowledge HTTP/2: run `script`, then read until `stream_id` is answered or
    reset, or the server says GOAWAY or closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2_client()
    headers: dict[str, str] = {}
    body = b""
    settings: dict[int, int] = {}
    try:
        writer.write(conn.data_to_send() + script(conn))
        await writer.drain()
        async with asyncio.timeout(DEADLINE):
            while True:
                data = await reader.read(65536)
                if not data:
                    return Outcome("eof", settings=settings)
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    return Outcome("eof", settings=settings)
                for event in events:
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        settings = {int(k): v.new_value for k, v in event.changed_settings.items()}
                    elif (
                        isinstance(event, h2.events.ResponseReceived)
                        and event.stream_id == stream_id
                    ):
                        headers = {
                            bytes(k).decode("latin-1"): bytes(v).decode("latin-1")
                            for k, v in event.headers
                        }
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                        body += event.data
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                        status = int(headers.pop(":status"))
                        return Outcome("http", status, headers, body, settings=settings)
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                        return Outcome("reset", code=int(event.error_code), settings=settings)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return Outcome("goaway", code=int(event.error_code), settings=settings)
                outgoing = conn.data_to_send()
                if outgoing:
                    writer.write(outgoing)
    except ConnectionError:
        return Outcome("eof", settings=settings)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def h2_request(
    method: str,
    path: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    stream_id: int = 1,
) -> H2Script:
    """A script sending one request on `stream_id`."""

    def script(conn: h2.connection.H2Connection) -> bytes:
        pairs = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", path.encode("latin-1")),
        ]
        pairs += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
        conn.send_headers(stream_id, pairs, end_stream=not body)
        if body:
            conn.send_data(stream_id, body, end_stream=True)
        return conn.data_to_send()

    return script
