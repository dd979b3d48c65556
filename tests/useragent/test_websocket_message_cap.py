"""A push service's WebSocket frame over MAX_MESSAGE_BYTES is refused (1009) and the
connection closed; one at the cap is read (a 64 KiB body as base64 fits)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest

from tidings.useragent.transport import ConnectionClosed, Delivery
from tidings.useragent.websocket import MAX_MESSAGE_BYTES, WebSocketTransport

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
NOTIFICATION = b'{"messageType":"notification","channelID":"c","version":"v","data":"QUFB"}'


def text_frame(payload: bytes) -> bytes:
    return bytes([0x81, 127]) + len(payload).to_bytes(8, "big") + payload


class BigFrames:
    """Handshake, `hello` answered, then the frames it is given; answers a close."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.close_code: int | None = None
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        opcode, _ = await read_frame(reader)  # hello
        answer = json.dumps({"messageType": "hello", "uaid": "a" * 32, "status": 200})
        writer.write(bytes([0x81, len(answer)]) + answer.encode())
        for frame in self.frames:
            writer.write(text_frame(frame))
        try:
            while True:
                opcode, payload = await read_frame(reader)
                if opcode == 0x8:  # the client's close: answered, then the socket ends
                    self.close_code = int.from_bytes(payload[:2], "big")
                    writer.write(b"\x88\x02" + payload[:2])
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()
        self.closed.set()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One masked client frame: its opcode and payload (RFC 6455 section 5.2)."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4)
    payload = await reader.readexactly(size)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.timeout(60)
async def test_a_frame_over_the_message_cap_closes_the_connection() -> None:
    assert MAX_MESSAGE_BYTES >= 4 * 65536 // 3 + 1024  # a 64 KiB body as base64, and more
    # At the cap (trailing blanks are allowed in JSON), then one byte over it.
    at_cap = NOTIFICATION + b" " * (MAX_MESSAGE_BYTES - len(NOTIFICATION))
    service = BigFrames([at_cap, at_cap + b" "])
    server = await asyncio.start_server(service.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = await WebSocketTransport(f"ws://127.0.0.1:{port}/", ping_interval=60).connect(None, [])
    try:
        async with asyncio.timeout(20):
            event = await conn.next_event()
            assert isinstance(event, Delivery) and event.body == b"AAA"
            with pytest.raises(ConnectionClosed):
                await conn.next_event()
            await service.closed.wait()
        assert service.close_code == 1009  # message too big
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()
