"""A push service's WebSocket frame over MAX_MESSAGE_BYTES is refused (1009) and the
connection closed; one at the cap is read (a 64 KiB body as base64 fits)."""

from __future__ import annotations

import asyncio

import pytest

from tidings.useragent.transport import ConnectionClosed, Delivery
from tidings.useragent.websocket import MAX_MESSAGE_BYTES, WebSocketTransport
from useragent.raw_websocket import accept, answer_hello, read_frame, text_frame

NOTIFICATION = b'{"messageType":"notification","channelID":"c","version":"v","data":"QUFB"}'


class BigFrames:
    """Handshake, `hello` answered, then the frames it is given; answers a close."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.close_code: int | None = None
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        await answer_hello(reader, writer)
        for frame in self.frames:
            writer.write(text_frame(frame))
        try:
            while True:
                first, payload = await read_frame(reader)
                if first & 0x0F == 0x8:  # the client's close: answered, then the socket ends
                    self.close_code = int.from_bytes(payload[:2], "big")
                    writer.write(b"\x88\x02" + payload[:2])
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()
        self.closed.set()


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
