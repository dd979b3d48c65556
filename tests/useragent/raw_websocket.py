"""A raw WebSocket server's side of the wire (RFC 6455), for scripted push services that
misbehave in ways `websockets` would not: the handshake, a `hello` answer, frames."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the client's upgrade request and switch protocols."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    answer = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + answer + b"\r\n\r\n"
    )


async def answer_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the client's `hello` and answer it as a push service does."""
    first, payload = await read_frame(reader)
    assert first == 0x81  # a final text frame
    assert json.loads(payload)["messageType"] == "hello"
    answer = json.dumps({"messageType": "hello", "uaid": "a" * 32, "status": 200})
    writer.write(bytes([0x81, len(answer)]) + answer.encode())


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame from the server (64-bit length, any size)."""
    return bytes([0x81, 127]) + len(payload).to_bytes(8, "big") + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One masked client frame (RFC 6455 section 5.2): its first byte (FIN and opcode)
    and its unmasked payload."""
    first, second = await reader.readexactly(2)
    assert second & 0x80  # clients mask every frame
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4)
    payload = await reader.readexactly(size)
    return first, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
