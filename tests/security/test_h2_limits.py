"""HTTP/2 limits against a hostile peer: a raw `h2` client over a real socket.

Each test drives one attack of issue #16 against an in-process server and asserts
the state the server keeps for it stays bounded (queued bytes, open streams, the
connection itself), or that the peer is told REFUSED_STREAM / ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from support.ci import free_port
from tidings.http2.limits import MAX_ENCODER_TABLE
from tidings.service.config import ServiceConfig
from tidings.service.http.h1 import WRITE_BUFFER_LIMIT
from tidings.service.http.h2 import MAX_CONCURRENT_STREAMS, Http2Connection
from tidings.service.http.server import TidingsServer
from tidings.service.run import build_server

EVENTUALLY = 30.0  # generous: the machine is shared and loaded


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds, checking every 20 ms, or fail after EVENTUALLY."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"never: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TidingsServer]:
    config = ServiceConfig(
        port=free_port(), db=str(tmp_path / "tidings.db"), log_level="warning"
    ).with_overrides({"request_timeout": 1.0})
    running = build_server(config)
    await running.start()
    try:
        yield running
    finally:
        await running.stop(grace=2)


def http2_connections(server: TidingsServer) -> list[Http2Connection]:
    return [c for c in server.context.connections if isinstance(c, Http2Connection)]


class RawClient:
    """An HTTP/2 client (prior knowledge) that reads only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[h2.events.Event] = []
        self.eof = False

    @classmethod
    async def connect(cls, port: int, *, receive_buffer: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connecting, so the window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def start(self, window: int | None = None) -> None:
        if window is not None:
            code = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={code: window}
            )
        self.conn.initiate_connection()
        self.send()

    def send(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def request(self, method: str, path: str, *, end_stream: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "127.0.0.1")]
        self.conn.send_headers(stream_id, [*headers, (":path", path)], end_stream=end_stream)
        return stream_id

    async def read_until(self, condition: Callable[[], bool], what: str) -> None:
        """Read and answer (SETTINGS ACKs, window updates) until `condition()` or EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENTUALLY
        while not condition():
            if self.eof:
                pytest.fail(f"connection closed before: {what}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"never: {what}")
            try:
                data = await asyncio.wait_for(self.reader.read(65536), remaining)
            except TimeoutError:
                pytest.fail(f"never: {what}")
            if not data:
                self.eof = True
                continue
            try:
                self.events += self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                print("client protocol error", repr(exc))
                self.eof = True
                continue
            self.writer.write(self.conn.data_to_send())

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def told_to_calm_down(client: RawClient) -> bool:
    return any(
        event.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        for event in client.of(h2.events.ConnectionTerminated)
    )


def stream_count(server: TidingsServer) -> int:
    return sum(len(c.streams) for c in http2_connections(server))


async def test_a_peer_that_does_not_read_costs_at_most_the_write_cap(
    server: TidingsServer,
) -> None:
    """Streams answered to a non-reading peer: reading stops at 1 MiB queued, then it is cut."""
    client = await RawClient.connect(server.port, receive_buffer=4096)
    # A huge window, so HTTP/2 flow control alone would let everything through.
    client.start(window=2**31 - 1)
    client.conn.increment_flow_control_window(2**30)
    client.send()
    await eventually(lambda: bool(http2_connections(server)), "the connection is served")
    connection = http2_connections(server)[0]
    transport = connection.transport
    assert transport is not None
    peak = 0

    def gone() -> bool:
        return connection not in server.context.connections

    try:
        for _ in range(40):  # waves of 50 answers of several kB: far more than socket buffers
            for _ in range(50):
                last = client.request("GET", "/openapi.json")
            client.send()

            def wave_done(last: int = last) -> bool:
                nonlocal peak
                peak = max(peak, transport.get_write_buffer_size())
                read_all = connection.conn.highest_inbound_stream_id >= last
                return gone() or not transport.is_reading() or (read_all and not connection.streams)

            await eventually(wave_done, "the wave is answered or reading stops")
            if gone() or not transport.is_reading():
                break
        # Reading stopped at the cap; only answers already under way were added to it.
        assert not transport.is_reading() or gone()
        assert peak <= WRITE_BUFFER_LIMIT + MAX_CONCURRENT_STREAMS * 1024
        # It never drains (request_timeout is 1 s here): the connection is closed.
        await eventually(gone, "the non-reading connection is closed")
    finally:
        await client.close()


async def test_a_ping_flood_is_not_answered_into_an_unbounded_buffer(
    server: TidingsServer,
) -> None:
    """PING ACKs to a peer that sends PINGs and never reads stay under the cap."""
    client = await RawClient.connect(server.port, receive_buffer=4096)
    client.start()
    await eventually(lambda: bool(http2_connections(server)), "the connection is served")
    connection = http2_connections(server)[0]
    peak = 0
    pings = b"".join(
        b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + i.to_bytes(8, "big") for i in range(20000)
    )

    async def flood() -> None:
        for _ in range(20):  # 400,000 PINGs: 6.8 MB of ACKs if all answered
            client.writer.write(pings)
            await client.writer.drain()

    flooding = asyncio.ensure_future(flood())

    def settled() -> bool:
        nonlocal peak
        if connection.transport is not None:
            peak = max(peak, connection.transport.get_write_buffer_size())
        return flooding.done() or connection not in server.context.connections

    try:
        await eventually(settled, "the flood is read or the connection is dropped")
        for _ in range(50):  # what was already read is answered by now
            await asyncio.sleep(0)
            settled()
        # The cap, plus the ACKs of what one read brought in (asyncio reads at most
        # 256 KiB at a time, and a PING ACK is as long as the PING).
        assert peak <= WRITE_BUFFER_LIMIT + 256 * 1024
    finally:
        flooding.cancel()
        await client.close()


async def test_streams_past_the_limit_are_refused(server: TidingsServer) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS is advertised, and enforced with REFUSED_STREAM."""
    client = await RawClient.connect(server.port)
    client.start()
    # Before the server's SETTINGS arrive: streams that never finish their request.
    for _ in range(MAX_CONCURRENT_STREAMS + 50):
        client.request("POST", "/subscribe", end_stream=False)
    client.send()

    def refused() -> list[h2.events.StreamReset]:
        return [
            event
            for event in client.of(h2.events.StreamReset)
            if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        ]

    try:
        await client.read_until(lambda: len(refused()) >= 50, "50 REFUSED_STREAM")
        assert len(refused()) == 50
        settings = client.of(h2.events.RemoteSettingsChanged)[0].changed_settings
        advertised = settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value
        assert advertised == MAX_CONCURRENT_STREAMS
        assert stream_count(server) == MAX_CONCURRENT_STREAMS
    finally:
        await client.close()


async def test_reset_streams_leave_nothing_behind(server: TidingsServer) -> None:
    """RST_STREAM on a stream still sending its request drops its state."""
    client = await RawClient.connect(server.port)
    client.start()
    ids = [client.request("POST", "/subscribe", end_stream=False) for _ in range(50)]
    for stream_id in ids:
        client.conn.send_data(stream_id, b"x" * 1000)
    client.send()
    try:
        await eventually(lambda: stream_count(server) == 50, "50 streams open")
        for stream_id in ids:
            client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        client.send()
        await eventually(lambda: stream_count(server) == 0, "the reset streams are gone")
    finally:
        await client.close()


async def test_a_request_not_sent_in_time_gets_408_and_is_dropped(
    server: TidingsServer,
) -> None:
    """request_timeout applies to each stream's request: 408, then the stream is gone."""
    client = await RawClient.connect(server.port)
    client.start()
    stream_id = client.request("POST", "/subscribe", end_stream=False)
    client.send()

    def answered() -> list[h2.events.ResponseReceived]:
        return [e for e in client.of(h2.events.ResponseReceived) if e.stream_id == stream_id]

    try:
        await client.read_until(lambda: bool(answered()), "an answer to the stalled request")
        assert dict(answered()[0].headers)[b":status"] == b"408"
        await eventually(lambda: stream_count(server) == 0, "the stalled stream is gone")
    finally:
        await client.close()


async def test_a_connection_without_a_request_is_closed(server: TidingsServer) -> None:
    """The header deadline: no preface and request within request_timeout, no connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # the preface, then nothing
    try:
        await eventually(lambda: bool(http2_connections(server)), "the connection is served")
        await eventually(lambda: not http2_connections(server), "the silent connection closed")
        assert await asyncio.wait_for(reader.read(), EVENTUALLY) is not None
    finally:
        writer.close()


async def test_a_rapid_reset_flood_is_sent_away(server: TidingsServer) -> None:
    """HEADERS+RST_STREAM pairs (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM, then close."""
    client = await RawClient.connect(server.port)
    client.start()
    for _ in range(1000):
        stream_id = client.request("GET", "/health")
        client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    client.send()

    try:
        await client.read_until(lambda: told_to_calm_down(client), "GOAWAY ENHANCE_YOUR_CALM")
        await eventually(lambda: not http2_connections(server), "the connection is closed")
        assert stream_count(server) == 0
    finally:
        await client.close()


async def test_a_header_list_over_16_kib_ends_the_connection(server: TidingsServer) -> None:
    """SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB, as HTTP/1.1's headers) is what HPACK enforces."""
    client = await RawClient.connect(server.port)
    client.start()
    stream_id = client.conn.get_next_available_stream_id()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1")]
    headers += [(":path", "/health"), ("x-padding", "a" * 20_000)]
    client.conn.send_headers(stream_id, headers, end_stream=True)
    client.send()
    try:
        await client.read_until(
            lambda: bool(client.of(h2.events.ConnectionTerminated)), "GOAWAY for the headers"
        )
        assert not client.of(h2.events.ResponseReceived)
        await eventually(lambda: not http2_connections(server), "the connection is closed")
    finally:
        await client.close()


def _flood_pings(client: RawClient, count: int) -> None:
    for i in range(count):
        client.conn.ping(i.to_bytes(8, "big"))


def _flood_settings(client: RawClient, count: int) -> None:
    code = h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE
    for i in range(count):
        client.conn.update_settings({code: 16384 + i % 2})


def _flood_priority(client: RawClient, count: int) -> None:
    for i in range(count):
        client.conn.prioritize(1 + 2 * (i % 50), weight=1 + i % 200)


def _flood_empty_data(client: RawClient, count: int) -> None:
    stream_id = client.request("POST", "/subscribe", end_stream=False)
    for _ in range(count):
        client.conn.send_data(stream_id, b"")


def _flood_unknown_frames(client: RawClient, count: int) -> None:
    """Frames of a type no extension here defines (0x77), which h2 hands on as events:
    before they were counted, 170,000 of them took 1.2 s of the event loop, unchecked."""
    frame = b"\x00\x00\x08\x77\x00\x00\x00\x00\x00" + b"unknown!"
    client.writer.write(frame * count)


def _flood_window_updates(client: RawClient, count: int) -> None:
    """WINDOW_UPDATEs for DATA never received: before they were counted, 400,000 took
    0.9 s of the event loop, unchecked."""
    for _ in range(count):
        client.conn.increment_flow_control_window(1)


@pytest.mark.parametrize(
    "flood",
    [
        _flood_pings,
        _flood_settings,
        _flood_priority,
        _flood_empty_data,
        _flood_unknown_frames,
        _flood_window_updates,
    ],
)
async def test_a_flood_of_frames_without_requests_is_sent_away(
    server: TidingsServer, flood: Callable[[RawClient, int], None]
) -> None:
    """PING, SETTINGS, PRIORITY or empty DATA frames by the thousand from a peer that reads
    every answer (CVE-2019-9512/9515/9516/9518): GOAWAY ENHANCE_YOUR_CALM, then close."""
    client = await RawClient.connect(server.port)
    client.start()
    flood(client, 5000)
    client.send()

    try:
        await client.read_until(lambda: told_to_calm_down(client), "GOAWAY ENHANCE_YOUR_CALM")
        await eventually(lambda: not http2_connections(server), "the connection is closed")
    finally:
        await client.close()


async def test_a_few_pings_and_settings_are_answered(server: TidingsServer) -> None:
    """The budget leaves ordinary use alone: 50 PINGs and a SETTINGS change, then a request."""
    client = await RawClient.connect(server.port)
    client.start()
    _flood_pings(client, 50)
    _flood_settings(client, 1)
    stream_id = client.request("GET", "/health")
    client.send()

    def answered() -> bool:
        return any(e.stream_id == stream_id for e in client.of(h2.events.ResponseReceived))

    try:
        await client.read_until(answered, "the answer to /health")
        assert len(client.of(h2.events.PingAckReceived)) == 50
        assert not client.of(h2.events.ConnectionTerminated)
    finally:
        await client.close()


async def test_a_body_declared_too_large_is_refused_before_it_is_sent(
    server: TidingsServer,
) -> None:
    """A push whose content-length is over the limit gets 413 at once, and RST_STREAM
    NO_ERROR asks the peer to send none of it; no 408 after request_timeout."""
    client = await RawClient.connect(server.port)
    client.start()
    stream_id = client.conn.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1")]
    headers += [(":path", "/push/anything"), ("content-length", "1000000"), ("ttl", "60")]
    client.conn.send_headers(stream_id, headers, end_stream=False)
    client.send()

    def answered() -> list[h2.events.ResponseReceived]:
        return [e for e in client.of(h2.events.ResponseReceived) if e.stream_id == stream_id]

    def stopped() -> bool:
        return any(
            event.stream_id == stream_id and event.error_code == h2.errors.ErrorCodes.NO_ERROR
            for event in client.of(h2.events.StreamReset)
        )

    try:
        await client.read_until(lambda: bool(answered()), "an answer to the huge push")
        assert dict(answered()[0].headers)[b":status"] == b"413"
        await client.read_until(stopped, "RST_STREAM NO_ERROR for the unsent body")
        await eventually(lambda: stream_count(server) == 0, "the stream is gone")
    finally:
        await client.close()


async def test_a_huge_header_table_size_does_not_grow_the_encoder_table(
    server: TidingsServer,
) -> None:
    """A peer that advertises SETTINGS_HEADER_TABLE_SIZE 2^31-1 lets our HPACK encoder
    keep every header it ever sent (each answer's x-request-id, each push's path): memory
    and, since the encoder searches its table linearly, CPU per header grew with every
    answer on the connection (30,000 /health requests took minutes, not 30 s). The
    encoder keeps at most MAX_ENCODER_TABLE (RFC 7541 section 4.2 lets it use less)."""
    client = await RawClient.connect(server.port)
    huge = 2**31 - 1
    code = h2.settings.SettingCodes.HEADER_TABLE_SIZE
    client.conn.local_settings = h2.settings.Settings(client=True, initial_values={code: huge})
    client.conn.decoder.max_allowed_table_size = huge  # ours, before the server acks it
    client.start()
    requests = 200  # each answer adds a new x-request-id: ~60 bytes of table, 12 KB in all
    for batch in range(1, 5):  # in batches: under the 100 concurrent streams
        for _ in range(requests // 4):
            client.request("GET", "/health")
        client.send()
        expected = batch * requests // 4
        await client.read_until(
            lambda n=expected: len(client.of(h2.events.StreamEnded)) >= n, "the answers"
        )
    try:
        (connection,) = http2_connections(server)
        table = connection.conn.encoder.header_table
        assert table.maxsize <= MAX_ENCODER_TABLE
        assert table._current_size <= MAX_ENCODER_TABLE
        assert not client.of(h2.events.ConnectionTerminated)
    finally:
        await client.close()


async def test_an_answer_the_peer_never_opens_a_window_for_is_given_up(
    server: TidingsServer,
) -> None:
    """A peer that advertises a zero stream window and never opens it: each answer
    waited for window forever, its stream and task kept, and the connection (whose idle
    timer runs only without streams) was held with no traffic at all, an HTTP/2 slow
    read. After request_timeout (1 s here) without window the stream is reset CANCEL
    and forgotten; the connection then idles out like any other."""
    client = await RawClient.connect(server.port)
    client.start(window=0)
    await client.read_until(lambda: bool(client.of(h2.events.SettingsAcknowledged)), "ack")
    stream_id = client.request("GET", "/openapi.json")
    client.send()

    def cancelled() -> bool:
        return any(
            event.stream_id == stream_id and event.error_code == h2.errors.ErrorCodes.CANCEL
            for event in client.of(h2.events.StreamReset)
        )

    try:
        await client.read_until(lambda: bool(client.of(h2.events.ResponseReceived)), "headers")
        assert not client.of(h2.events.DataReceived)  # no window: no body
        await client.read_until(cancelled, "RST_STREAM CANCEL of the stalled answer")
        await eventually(lambda: stream_count(server) == 0, "the stream is forgotten")
    finally:
        await client.close()


async def test_window_updates_for_the_data_received_are_not_a_flood(
    server: TidingsServer,
) -> None:
    """A peer that opens both windows again after every DATA frame it reads (two
    WINDOW_UPDATEs each, more than the budget in all) is doing its job: each DATA frame
    sent gives the budget back what its window updates cost."""
    client = await RawClient.connect(server.port)
    client.start()
    answers = 1500
    done = 0
    try:
        while done < answers:
            for _ in range(50):
                client.request("GET", "/health")
            client.send()
            done += 50
            await client.read_until(
                lambda n=done: len(client.of(h2.events.StreamEnded)) >= n, "the answers"
            )
            for event in client.of(h2.events.DataReceived):
                client.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                client.conn.increment_flow_control_window(1)  # and one more, as some peers do
            client.events = [e for e in client.events if not isinstance(e, h2.events.DataReceived)]
            client.send()
        assert not client.of(h2.events.ConnectionTerminated)
    finally:
        await client.close()
