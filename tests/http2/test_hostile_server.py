"""Our HTTP/2 clients against a hostile server: what it can make them hold is bounded
(`tidings.http2.limits`): the HPACK encoder's table, a response's body, a pushed
response's body, open promises."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from tidings.http2 import H2Client, H2Error, limits
from tidings.http2.limits import MAX_ENCODER_TABLE, MAX_OPEN_PROMISES, MAX_PUSHED_BODY
from tidings.sender.transport.base import TransportError
from tidings.sender.transport.http2 import H2Connection

# The server's answer to one request: writes frames on `conn` for the request's stream.
Answer = Callable[[h2.connection.H2Connection, int], None]


def huge_table(conn: h2.connection.H2Connection, stream_id: int) -> None:
    conn.send_headers(stream_id, [(b":status", b"200"), (b"x-a", b"1")], end_stream=True)


def endless_body(conn: h2.connection.H2Connection, stream_id: int) -> None:
    conn.send_headers(stream_id, [(b":status", b"200")])
    feed(conn, stream_id)


def feed(conn: h2.connection.H2Connection, stream_id: int) -> None:
    """DATA as far as flow control allows (again whenever the client opens its window)."""
    with contextlib.suppress(h2.exceptions.ProtocolError):  # reset by the client
        window = conn.local_flow_control_window(stream_id)
        while window > 0:
            size = min(window, 16384)
            conn.send_data(stream_id, b"x" * size)
            window -= size


def many_promises(conn: h2.connection.H2Connection, stream_id: int) -> None:
    conn.send_headers(stream_id, [(b":status", b"200")])
    for n in range(MAX_OPEN_PROMISES + 50):  # promised, never sent
        promised = conn.get_next_available_stream_id()
        request = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", f"/m/{n}".encode()),
        ]
        conn.push_stream(stream_id, promised, request)


@contextlib.asynccontextmanager
async def serving(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    handlers: set[asyncio.Task[None]],
) -> AsyncIterator[int]:
    """`serve` on a free port; its connection handlers cancelled at the end."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


class Bodies:
    """Bodies a server is sending, each as far as flow control allows (`feed` again
    whenever the client opens its windows); a stream reset by the client is dropped."""

    def __init__(self) -> None:
        self.unsent: dict[int, bytes] = {}

    def send(self, conn: h2.connection.H2Connection, stream_id: int, body: bytes) -> None:
        self.unsent[stream_id] = body
        self.feed(conn)

    def feed(self, conn: h2.connection.H2Connection) -> None:
        for stream_id, body in list(self.unsent.items()):
            try:
                while body:
                    size = min(conn.local_flow_control_window(stream_id), 16384)
                    if size <= 0:
                        break
                    chunk, body = body[:size], body[size:]
                    conn.send_data(stream_id, chunk, end_stream=not body)
            except h2.exceptions.ProtocolError:  # reset by the client
                body = b""
            if body:
                self.unsent[stream_id] = body
            else:
                del self.unsent[stream_id]


@contextlib.asynccontextmanager
async def hostile_server(
    answer: Answer, bodies: Bodies | None = None
) -> AsyncIterator[tuple[int, list[int]]]:
    """A prior-knowledge HTTP/2 server advertising a 2^31-1 header table, answering
    every request with `answer` (and sending what it left in `bodies`); yields its
    port and the streams the client reset."""
    resets: list[int] = []

    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        handlers.add(handler)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: 2**31 - 1,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        answered: set[int] = set()
        conn.decoder.max_allowed_table_size = 2**31 - 1  # as advertised, at once
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        answer(conn, event.stream_id)
                        answered.add(event.stream_id)
                    elif isinstance(event, h2.events.WindowUpdated) and answer is endless_body:
                        for stream_id in answered:
                            feed(conn, stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        resets.append(event.stream_id)
                        answered.discard(event.stream_id)
                        if bodies is not None:
                            bodies.unsent.pop(event.stream_id, None)
                if bodies is not None:
                    bodies.feed(conn)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        writer.close()

    async with serving(serve, handlers) as port:
        yield port, resets


async def sender_connection(port: int) -> H2Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: H2Connection(f"127.0.0.1:{port}", "http"), "127.0.0.1", port
    )
    return protocol


async def test_the_encoder_table_stays_small_whatever_the_server_allows() -> None:
    async with hostile_server(huge_table) as (port, _):
        async with await H2Client.connect(f"http://127.0.0.1:{port}") as client:
            for _ in range(3):
                assert (await client.request("GET", "/", timeout=10)).status == 200
            assert client.conn.encoder.header_table_size <= MAX_ENCODER_TABLE
        sender = await sender_connection(port)
        try:
            for _ in range(3):
                assert (await sender.request("POST", "/p", {}, b"x")).status == 200
            assert sender.conn.encoder.header_table_size <= MAX_ENCODER_TABLE
        finally:
            sender.close()


async def test_an_endless_body_is_cut_off() -> None:
    async with hostile_server(endless_body) as (port, resets):
        async with await H2Client.connect(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(H2Error, match="body over"):
                await client.request("GET", "/", timeout=10)
        sender = await sender_connection(port)
        try:
            with pytest.raises(TransportError, match="over") as raised:
                await sender.request("POST", "/p", {}, b"x")
            assert not raised.value.safe_to_retry  # the push itself may have been taken
        finally:
            sender.close()
        async with asyncio.timeout(10):  # both cut it off with RST_STREAM
            while len(resets) < 2:
                await asyncio.sleep(0.01)


async def test_promises_past_the_limit_are_refused() -> None:
    async with (
        hostile_server(many_promises) as (port, resets),
        await H2Client.connect(f"http://127.0.0.1:{port}") as client,
    ):
        await client.open_stream("GET", "/set/x")
        async with asyncio.timeout(10):
            while len(resets) < 50:
                await asyncio.sleep(0.01)
        assert len(client._promises) == MAX_OPEN_PROMISES


@contextlib.asynccontextmanager
async def ping_flooder() -> AsyncIterator[int]:
    """A server that, once asked anything, sends PINGs without end and reads no more."""
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        handlers.add(handler)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        with contextlib.suppress(ConnectionError, h2.exceptions.ProtocolError):
            while data := await reader.read(65536):
                events = conn.receive_data(data)
                writer.write(conn.data_to_send())
                if any(isinstance(e, h2.events.RequestReceived) for e in events):
                    break
            for n in range(200_000):  # bounded: the client must give up long before
                conn.ping(n.to_bytes(8, "big"))
                if n % 1000 == 999:
                    writer.write(conn.data_to_send())
                    await writer.drain()
            await asyncio.Event().wait()  # holds the connection open, unread, until torn down
        writer.close()

    async with serving(serve, handlers) as port:
        yield port


async def test_a_ping_flood_from_a_server_that_does_not_read_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each PING is answered; a server that never reads the answers once grew our
    write buffer without end. Small socket buffers and MAX_UNSENT keep the test short."""
    monkeypatch.setattr(limits, "MAX_UNSENT", 16384)
    async with ping_flooder() as port:
        async with await H2Client.connect(f"http://127.0.0.1:{port}") as client:
            sock = client.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            with pytest.raises(H2Error, match="connection"):  # not a timeout
                await client.request("GET", "/", timeout=20)
            assert client.transport.is_closing()
        sender = await sender_connection(port)
        sock = sender.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            async with asyncio.timeout(20):  # old code: waited here until this timeout
                with pytest.raises(TransportError):
                    await sender.request("POST", "/p", {}, b"x")
        finally:
            sender.close()


def push_then_answer(conn: h2.connection.H2Connection, stream_id: int) -> None:
    promised = conn.get_next_available_stream_id()
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/m/1")]
    conn.push_stream(stream_id, promised, [*request, (b":authority", b"127.0.0.1")])
    conn.send_headers(stream_id, [(b":status", b"200")], end_stream=True)


async def test_pushes_on_a_plain_request_are_refused() -> None:
    """`request` hands over only the response: a push on it would wait untaken and
    count against MAX_QUEUED_PUSHES for ever (reading would stop), so it is refused."""
    async with (
        hostile_server(push_then_answer) as (port, resets),
        await H2Client.connect(f"http://127.0.0.1:{port}") as client,
    ):
        for _ in range(3):
            assert (await client.request("GET", "/", timeout=10)).status == 200
        async with asyncio.timeout(10):  # old code: kept each promise, never reset it
            while len(resets) < 3:
                await asyncio.sleep(0.01)
        assert not client._promises


def pushes_of_sizes(bodies: Bodies, *sizes: int) -> Answer:
    """Answers with a push of each size, then a response as large as the largest."""

    def answer(conn: h2.connection.H2Connection, stream_id: int) -> None:
        conn.send_headers(stream_id, [(b":status", b"200")])
        for n, size in enumerate(sizes):
            promised = conn.get_next_available_stream_id()
            request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", f"/m/{n}".encode())]
            conn.push_stream(stream_id, promised, [*request, (b":authority", b"127.0.0.1")])
            conn.send_headers(promised, [(b":status", b"200")])
            bodies.send(conn, promised, b"p" * size)
        bodies.send(conn, stream_id, b"r" * max(sizes))

    return answer


async def test_a_pushed_body_over_its_own_cap_is_refused_and_not_delivered() -> None:
    """A push message is a few KiB (RFC 8030 section 7.2): a pushed body may not grow
    to a response's 1 MiB (64 of them could wait untaken); past MAX_PUSHED_BODY it is
    reset with CANCEL and dropped, while the pushes around it and the response (which
    may be larger) arrive whole. The one over by a byte is complete when the client
    resets it (the server ignores that reset); the endless one is cut off."""
    bodies = Bodies()
    sizes = (10, MAX_PUSHED_BODY + 1, MAX_PUSHED_BODY, 4 * MAX_PUSHED_BODY)
    async with (
        hostile_server(pushes_of_sizes(bodies, *sizes), bodies) as (port, resets),
        await H2Client.connect(f"http://127.0.0.1:{port}") as client,
    ):
        stream = await client.open_stream("GET", "/set/x")
        async with asyncio.timeout(10):
            response = await stream.response
            await stream.done.wait()
        assert response.body == b"r" * max(sizes)  # a response may be larger
        delivered = []
        while not stream.pushes.empty():
            delivered.append(stream.pushes.get_nowait())
        assert [(p.path, len(p.body)) for p in delivered] == [("/m/0", 10), ("/m/2", sizes[2])]
        async with asyncio.timeout(10):  # old code: took it whole (up to 1 MiB)
            while 8 not in resets:  # the fourth promised stream
                await asyncio.sleep(0.01)
        assert set(resets) <= {4, 8}
        assert not client._promises
