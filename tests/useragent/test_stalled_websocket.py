"""A push service that stops reading our WebSocket: the keepalive `{}` waits behind a
full write buffer, so its send is bounded like its answer (`ping_timeout`); the
connection is then closed and its socket let go, and the user agent reconnects."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator

import pytest

from tidings.useragent.transport import Acknowledgement, ConnectionClosed
from tidings.useragent.websocket import WebSocketTransport

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
SMALL_BUFFER = 4096  # socket buffers, so that a few hundred KiB fill them


class StalledService:
    """A raw WebSocket server: handshake, `hello` answered, then it reads no more."""

    def __init__(self) -> None:
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.hellos = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.readers.append(reader)
        self.writers.append(writer)
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
        hello = json.loads(await read_client_frame(reader))
        assert hello["messageType"] == "hello"
        self.hellos += 1
        answer = json.dumps({"messageType": "hello", "uaid": "a" * 32, "status": 200})
        writer.write(bytes([0x81, len(answer)]) + answer.encode())
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()  # and never again, until the test looks

    async def gone(self, n: int) -> None:
        """Read connection `n` to its end: it must have been closed (EOF or reset)."""
        reader, transport = self.readers[n], self.writers[n].transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.resume_reading()
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 16):
                pass


async def read_client_frame(reader: asyncio.StreamReader) -> bytes:
    """One masked client frame's payload (RFC 6455 section 5.2)."""
    first, second = await reader.readexactly(2)
    assert first == 0x81 and second & 0x80  # a final text frame, masked
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4)
    payload = await reader.readexactly(size)
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@contextlib.asynccontextmanager
async def stalled_service() -> AsyncIterator[StalledService]:
    service = StalledService()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)  # inherited
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(service.serve, sock=listener)
    service.port = listener.getsockname()[1]
    try:
        yield service
    finally:
        for writer in service.writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


@pytest.mark.timeout(60)
async def test_a_keepalive_a_service_never_reads_closes_the_connection() -> None:
    """Acknowledgements fill the write buffer of a service that stopped reading; the
    keepalive's `{}` then waited behind them for ever (and its close too, the socket
    left open). Now it gives up within `ping_timeout` and the socket is aborted."""
    async with stalled_service() as service:
        transport = WebSocketTransport(
            f"ws://127.0.0.1:{service.port}/", ping_interval=0.05, ping_timeout=0.2
        )
        conn = await transport.connect(None, [])
        sock = conn._ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        acks = [Acknowledgement(f"channel-{n:06}", f"message-{n:040}", 100) for n in range(10_000)]
        acking = asyncio.create_task(conn.acknowledge(acks))  # about 1 MB
        try:
            await asyncio.sleep(0)  # written into the buffer, waiting for room
            assert not acking.done()
            assert conn._ws.transport.get_write_buffer_size() > 1 << 19
            async with asyncio.timeout(20):  # old code: waited here until this timeout
                with pytest.raises(ConnectionClosed, match="ping"):
                    await conn.next_event()
                await service.gone(0)  # old code: the socket stayed open
                with contextlib.suppress(ConnectionClosed):
                    await acking  # no longer waiting
            assert conn.closed
        finally:
            acking.cancel()
            await conn.close()
