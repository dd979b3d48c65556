"""A push service that stops reading our WebSocket: the keepalive `{}` waits behind a
full write buffer, so its send is bounded like its answer (`ping_timeout`); the
connection is then closed and its socket let go, and the user agent reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from tidings.useragent.transport import Acknowledgement, ConnectionClosed
from tidings.useragent.websocket import WebSocketTransport
from useragent.raw_websocket import accept, answer_hello

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
        await accept(reader, writer)
        await answer_hello(reader, writer)
        self.hellos += 1
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
