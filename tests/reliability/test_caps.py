"""Idle and slow clients: a stalled request, a silent WebSocket, a client that never reads.

Each holds a connection (memory, a file descriptor) while giving nothing back; each is
cut off after its limit. The timeouts are shortened by configuration so the tests are
quick; the defaults are in docs/security.md.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from pathlib import Path

import httpx

from support.service import running_service
from tidings.service.http.h1 import WRITE_BUFFER_LIMIT


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Read until the service closes the connection; how long it took."""
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(65536), seconds):
        pass
    return time.monotonic() - started


async def test_a_stalled_request_is_cut_off(tmp_path: Path) -> None:
    async with running_service(tmp_path, request_timeout=0.5) as running:
        port = running.config.port
        # Headers that never end (slowloris).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /push/x HTTP/1.1\r\nhost: x\r\nttl: 6")
        assert await closed_within(reader, 5) < 3
        writer.close()
        # A body that never comes.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /push/x HTTP/1.1\r\nhost: x\r\nttl: 60\r\ncontent-length: 100\r\n\r\n")
        writer.write(b"0123456789")
        assert await closed_within(reader, 5) < 3
        writer.close()
        # A connection that never sends anything.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_within(reader, 5) < 3
        writer.close()
        # The service is still fine.
        async with httpx.AsyncClient() as client:
            assert (await client.get(running.url + "/health")).status_code == 200


async def test_a_websocket_that_never_says_hello_is_closed(tmp_path: Path) -> None:
    async with running_service(tmp_path, hello_timeout=0.5) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.config.port)
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-version: 13\r\nsec-websocket-key: " + key + b"\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 101")
        close = await asyncio.wait_for(reader.read(64), 5)
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1008
        writer.close()


async def test_a_pipelining_client_that_never_reads_is_dropped(tmp_path: Path) -> None:
    async with running_service(tmp_path) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", running.config.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        request = b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n"
        async with httpx.AsyncClient() as client:
            document = len((await client.get(running.url + "/openapi.json")).content)
        count = 3 * WRITE_BUFFER_LIMIT // document + 50  # far more than it may buffer
        dropped = False
        for _ in range(count // 10):
            try:
                writer.write(request * 10)
                await asyncio.wait_for(writer.drain(), 2)
            except (ConnectionError, TimeoutError):
                dropped = True
                break
            await asyncio.sleep(0.005)
        deadline = time.monotonic() + 10
        while not dropped and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            dropped = writer.is_closing() or reader.at_eof()
            try:
                writer.write(request)
                await asyncio.wait_for(writer.drain(), 0.5)
            except (ConnectionError, TimeoutError):
                dropped = True
        assert dropped, "the service kept answering a client that reads nothing"
        writer.close()
        # Everyone else is served.
        async with httpx.AsyncClient() as client:
            assert (await client.get(running.url + "/health")).status_code == 200


async def test_a_websocket_client_that_never_reads_is_closed(tmp_path: Path) -> None:
    settings = {"rate_push_subscription": "off", "max_messages_per_user_agent": 100_000}
    async with running_service(tmp_path, **settings) as running:
        agent = await running.agent()
        registration = await agent.register()
        assert running.service is not None
        # Stop reading: pause the client's transport, shrink its receive buffer.
        transport = agent.ws.transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.pause_reading()
        body = os.urandom(4000)
        headers = {"ttl": "0", "content-encoding": "aes128gcm"}
        body = body[:16] + (4096).to_bytes(4, "big") + b"\0" + body[21:]
        async with httpx.AsyncClient() as client:
            for _ in range(3000):  # up to 16 MB of frames for a client reading nothing
                response = await client.post(registration.endpoint, content=body, headers=headers)
                assert response.status_code == 201
                if not running.service.hub.is_connected(str(agent.uaid)):
                    break
        # Dropped (not closed with a frame that could never get through): its buffer is
        # freed at once and it leaves the hub.
        assert not running.service.hub.is_connected(str(agent.uaid))
        transport.abort()
        again = await running.agent(agent.uaid)  # the user agent comes back later: fine
        await again.close()
