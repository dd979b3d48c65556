"""A push service faster than the application: the user agent's transports stop reading
instead of queueing without end (`MAX_QUEUED_PUSHES`, `MAX_QUEUED_EVENTS`), answer
nothing late because of it (pings wait), and hand over every message, once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

from tidings.http2 import H2Client
from tidings.http2.limits import MAX_QUEUED_PUSHES
from tidings.useragent.rfc8030 import Http2Connection, Http2Transport
from tidings.useragent.transport import MAX_QUEUED_EVENTS, ConnectionClosed, Delivery
from tidings.useragent.websocket import WebSocketConnection, WebSocketTransport

PUSHES = 5000
LINK = b'</p/sub>; rel="urn:ietf:params:push"'


@contextlib.asynccontextmanager
async def pushing_h2_server(*, then_end: bool = False) -> AsyncIterator[int]:
    """Prior-knowledge HTTP/2: a GET with `Prefer: wait=0` gets a 204; any other
    request gets PUSHES small pushed messages /m/0, /m/1, ... as fast as flow control
    lets them go, and stays open (`then_end`: then a 200 ends it). PINGs are answered
    all along."""
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
            if then_end:
                conn.send_headers(stream_id, [(b":status", b"200")], end_stream=True)
                writer.write(conn.data_to_send())

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


async def until_paused(
    transport: asyncio.Transport, conn: Http2Connection | WebSocketConnection
) -> None:
    """Wait until `conn` holds MAX_QUEUED_EVENTS and its socket is not read, checking
    all along that it never holds more (old code read on, queueing everything)."""
    async with asyncio.timeout(20):
        while transport.is_reading() or conn._events.qsize() < MAX_QUEUED_EVENTS:
            assert conn._events.qsize() <= MAX_QUEUED_EVENTS
            assert not conn._closed, conn.close_reason  # e.g. a ping taken for a dead peer
            await asyncio.sleep(0.01)
    assert conn._events.qsize() == MAX_QUEUED_EVENTS


async def take(conn: Http2Connection | WebSocketConnection, count: int) -> list[str]:
    """The message ids of the next `count` events."""
    ids = []
    for _ in range(count):
        event = await asyncio.wait_for(conn.next_event(), 10)
        assert isinstance(event, Delivery)
        ids.append(event.message_id)
    return ids


async def test_the_rfc8030_connection_stops_reading_while_the_user_agent_is_behind() -> None:
    async with pushing_h2_server() as port:
        origin = f"http://127.0.0.1:{port}"
        # A PING every 10 ms, answered within 0.3 s of reading: time paused does not count.
        transport = Http2Transport(origin, ping_interval=0.01, ping_timeout=0.3)
        conn = await transport.connect(f"{origin}/set/s", [])
        try:
            client = next(iter(conn._clients.values()))
            assert client.transport is not None
            await until_paused(client.transport, conn)
            assert client._queued <= MAX_QUEUED_PUSHES  # and at most as many in the client
            assert client.reading.paused
            await asyncio.sleep(1)  # pings came due while paused, none answered
            assert await take(conn, PUSHES) == [f"{origin}/m/{n}" for n in range(PUSHES)]
            assert conn._events.qsize() == 0
            assert not conn._closed  # no ping was taken for a dead connection
        finally:
            await conn.close()


async def test_pushes_before_the_end_of_the_monitor_all_arrive_before_the_close() -> None:
    """The service ends the GET behind its pushes: we read the end only once the user
    agent took enough of them, then the connection closes; the pushes still held on
    the way to the user agent are handed over before ConnectionClosed."""
    async with pushing_h2_server(then_end=True) as port:
        origin = f"http://127.0.0.1:{port}"
        conn = await Http2Transport(origin, ping_interval=0).connect(f"{origin}/set/s", [])
        try:
            ids = []
            with contextlib.suppress(ConnectionClosed):
                for _ in range(PUSHES + 1):  # bounded: the close must come
                    event = await asyncio.wait_for(conn.next_event(), 10)
                    assert isinstance(event, Delivery)
                    ids.append(event.message_id)
            assert ids == [f"{origin}/m/{n}" for n in range(PUSHES)]
            assert "ended the monitor" in conn.close_reason
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def notifying_ws_server() -> AsyncIterator[str]:
    """The Firefox protocol: hello answered, then PUSHES notifications v0, v1, ... and a
    close; `{}` pings answered all along."""

    async def notify(ws: ServerConnection) -> None:
        for n in range(PUSHES):
            frame = {"messageType": "notification", "channelID": "c1", "version": f"v{n}"}
            await ws.send(json.dumps(frame))  # waits once the client stops reading
        await ws.close()

    async def handler(ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        assert hello["messageType"] == "hello"
        await ws.send(json.dumps({"messageType": "hello", "status": 200, "uaid": "u1"}))
        sending = asyncio.create_task(notify(ws))
        try:
            async for text in ws:
                if text == "{}":
                    await ws.send("{}")
        except WsConnectionClosed:
            pass
        finally:
            await sending

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def test_the_websocket_connection_stops_reading_while_the_user_agent_is_behind() -> None:
    async with notifying_ws_server() as url:
        transport = WebSocketTransport(url, ping_interval=0.01, ping_timeout=0.3)
        conn = await transport.connect(None, [])
        try:
            await until_paused(conn._ws.transport, conn)
            await asyncio.sleep(1)  # pings came due while paused, none answered
            assert await take(conn, PUSHES) == [f"v{n}" for n in range(PUSHES)]
            # The service's close, behind them all, is noticed once they are read.
            async with asyncio.timeout(10):
                try:
                    await conn.next_event()
                    raise AssertionError("an event after the last notification")
                except ConnectionClosed as exc:
                    assert "ping" not in str(exc)
        finally:
            await conn.close()


async def test_a_paused_connection_still_closes_at_once() -> None:
    """Closed by the user agent while paused (its reader waiting for room): the close
    neither waits for the backlog nor hangs, and the sockets are let go."""
    async with pushing_h2_server() as port, notifying_ws_server() as url:
        origin = f"http://127.0.0.1:{port}"
        h2_conn = await Http2Transport(origin, ping_interval=0).connect(f"{origin}/set/s", [])
        ws_conn = await WebSocketTransport(url, ping_interval=0).connect(None, [])
        client = next(iter(h2_conn._clients.values()))
        assert client.transport is not None
        await until_paused(client.transport, h2_conn)
        await until_paused(ws_conn._ws.transport, ws_conn)
        async with asyncio.timeout(10):
            await h2_conn.close()
            await ws_conn.close()
        assert client.transport.is_closing()
        assert ws_conn._ws.transport.is_closing()
        assert len(await take(h2_conn, MAX_QUEUED_EVENTS)) == MAX_QUEUED_EVENTS  # kept
        try:
            await asyncio.wait_for(h2_conn.next_event(), 10)
            raise AssertionError("an event past those held")
        except ConnectionClosed as exc:
            assert "closed by the user agent" in str(exc)
