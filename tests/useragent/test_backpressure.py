"""A push service faster than the application: the user agent's transports stop reading
instead of queueing without end (`MAX_QUEUED_PUSHES`, `MAX_QUEUED_EVENTS`), answer
nothing late because of it (pings wait), and hand over every message, once, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tidings.http2 import H2Client
from tidings.http2.limits import MAX_QUEUED_PUSHES

PUSHES = 5000
LINK = b'</p/sub>; rel="urn:ietf:params:push"'


@contextlib.asynccontextmanager
async def pushing_h2_server() -> AsyncIterator[int]:
    """Prior-knowledge HTTP/2: a GET with `Prefer: wait=0` gets a 204; any other
    request gets PUSHES small pushed messages /m/0, /m/1, ... as fast as flow control
    lets them go, and stays open. PINGs are answered all along."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        window = asyncio.Event()

        async def push_all(stream_id: int) -> None:
            for n in range(PUSHES):
                promised = conn.get_next_available_stream_id()
                path = f"/m/{n}".encode()
                request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path)]
                conn.push_stream(stream_id, promised, [*request, (b":authority", b"x")])
                conn.send_headers(promised, [(b":status", b"200"), (b"link", LINK)])
                body = b"message %d" % n
                while min(conn.local_flow_control_window(promised), 65535) < len(body):
                    window.clear()
                    await window.wait()
                conn.send_data(promised, body, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()  # waits once the client stops reading

        with contextlib.suppress(ConnectionError, h2.exceptions.ProtocolError):
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        if (b"prefer", b"wait=0") in (event.headers or []):
                            conn.send_headers(event.stream_id, [(b":status", b"204")], True)
                        else:
                            tasks.add(asyncio.create_task(push_all(event.stream_id)))
                    elif isinstance(event, h2.events.WindowUpdated):
                        window.set()
                writer.write(conn.data_to_send())
        writer.close()

    async def serve_h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        await handle(reader, writer)

    server = await asyncio.start_server(serve_h2, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_an_h2_client_stops_reading_while_pushes_wait_untaken() -> None:
    async with (
        pushing_h2_server() as port,
        await H2Client.connect(f"http://127.0.0.1:{port}") as client,
    ):
        assert client.transport is not None
        stream = await client.open_stream("GET", "/set/s")
        async with asyncio.timeout(20):
            while client.transport.is_reading():  # old code: read on, queueing every push
                assert stream.pushes.qsize() <= MAX_QUEUED_PUSHES
                await asyncio.sleep(0.01)
        assert stream.pushes.qsize() == MAX_QUEUED_PUSHES
        assert client.reading.paused
        ping = asyncio.create_task(client.ping(timeout=0.3))
        await asyncio.sleep(1)  # the PING's own timeout has passed meanwhile...
        assert not ping.done()  # ...but not while reading: its ACK waits unread
        paths = [(await stream.next_push(timeout=10)).path for _ in range(PUSHES)]
        assert paths == [f"/m/{n}" for n in range(PUSHES)]
        await asyncio.wait_for(ping, 10)  # answered once reading resumed
        assert client.transport.is_reading()
        assert stream.pushes.empty()
