"""TLS connections count against the connection caps from accept, their handshake included.

asyncio calls a server's protocol only once the TLS handshake is done. Before the
listener took plain TCP and started TLS itself, a client could open thousands of TCP
connections to the TLS port and never finish a handshake, each holding a descriptor for
`tls_handshake_timeout`, outside `max_connections` and `max_connections_per_address`
(the process has 20,000 descriptors here). A "silent" client below is such a connection:
TCP to the TLS port, nothing sent. As in test_connection_caps.py, 127.0.0.1 is counted
(only ::1 is exempt) and 127.0.0.2... are other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from security.test_connection_caps import (
    DEADLINE,
    HEALTH,
    LAST,
    UPGRADE,
    Client,
    serving,
    settled,
)
from security.test_tls_handshake import certificate, tls_serve
from tidings.service.config import ServiceConfig, load_config
from tidings.service.http.admission import REFUSING_PER_ADDRESS, ConnectionAdmission
from tidings.service.http.server import HttpServer, _HandOff
from tidings.service.push_app import PushApp, connection_key

SLOW = 60.0  # a handshake timeout no test waits for: a connection closed sooner was refused
STALLED = b"\x16\x03\x01\x02\x00\x01"  # a TLS record header: a ClientHello begun, never ended

# Sans-I/O: the counting ----------------------------------------------------------------


def test_a_handshake_counts_against_both_caps_from_accept() -> None:
    admission = ConnectionAdmission(per_address=2, max_connections=3)
    first = admission.open("192.0.2.1", handshake=True)
    assert first is not None and first.handshaking and not first.refused
    assert (admission.total, admission.handshakes, admission.count("192.0.2.1")) == (1, 1, 1)
    second = admission.open("192.0.2.1", handshake=True)
    third = admission.open("192.0.2.1", handshake=True)
    assert second is not None and not second.refused
    assert third is not None and third.refused  # answered 429 once its handshake is done
    assert admission.open("198.51.100.1", handshake=True) is None  # the node holds 3
    assert (admission.refused_address, admission.refused_node) == (1, 1)
    admission.handshake_done(first)
    admission.handshake_done(first)  # counted once
    assert (admission.total, admission.handshakes) == (3, 2)  # still open, served
    for slot in (first, second, third):  # closing a handshaking slot ends its handshake
        admission.close(slot)
    assert (admission.total, admission.handshakes, len(admission)) == (0, 0, 0)


def test_handshakes_in_progress_per_address_are_capped() -> None:
    key = connection_key(ServiceConfig())
    admission = ConnectionAdmission(
        per_address=None, max_connections=None, key_of=key, handshakes_per_address=2
    )
    slots = [admission.open("192.0.2.1", handshake=True) for _ in range(2)]
    assert admission.open("192.0.2.1", handshake=True) is None  # closed at once
    assert admission.refused_handshake == 1
    slots.append(admission.open("192.0.2.2", handshake=True))  # another address
    slots.append(admission.open("192.0.2.1"))  # a plain connection has no handshake
    slots += [admission.open("2001:db8:1:2::1", handshake=True) for _ in range(2)]
    assert admission.open("2001:db8:1:2:ffff::9", handshake=True) is None  # the same /64
    slots += [admission.open("127.0.0.1", handshake=True) for _ in range(5)]  # exempt
    assert all(slot is not None and not slot.refused for slot in slots)
    assert admission.handshaking("192.0.2.1") == 2 and admission.handshakes == 10
    done = slots[0]
    assert done is not None
    admission.handshake_done(done)  # its handshake over, the connection no longer blocks one
    assert admission.handshaking("192.0.2.1") == 1
    again = admission.open("192.0.2.1", handshake=True)
    assert again is not None
    for slot in (*slots, again):
        assert slot is not None
        admission.close(slot)
    assert (admission.total, admission.handshakes, len(admission)) == (0, 0, 0)


def test_the_handshake_cap_setting(tmp_path: Path) -> None:
    assert ServiceConfig().tls_handshake_cap() == 64
    assert ServiceConfig(max_tls_handshakes_per_address="off").tls_handshake_cap() is None
    with pytest.raises(ValueError, match="max_tls_handshakes_per_address"):
        ServiceConfig(max_tls_handshakes_per_address="0")
    file = tmp_path / "tidings.toml"
    file.write_text("[serve]\nmax_tls_handshakes_per_address = 8\n")
    assert load_config(file, environ={}).tls_handshake_cap() == 8
    environ = {"TIDINGS_MAX_TLS_HANDSHAKES_PER_ADDRESS": "off"}
    assert load_config(file, environ=environ).tls_handshake_cap() is None


class Recording(asyncio.Protocol):
    """A protocol that notes what it is told, and closes on EOF (the default)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append(("made", transport))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> None:
        self.events.append(("eof", None))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))


class HandOffTransport(asyncio.Transport):
    """Just what a hand-off does to the TLS transport: set its protocol, maybe close it."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None
        self.closed = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def close(self) -> None:
        self.closed = True


def test_what_comes_before_the_hand_off_goes_on_in_order() -> None:
    # asyncio may decrypt a request (and see EOF) before start_tls returns; a close it
    # queued before the hand-off is delivered after it.
    receiver = _HandOff()
    receiver.data_received(b"GET / HTTP/1.1\r\n")
    receiver.data_received(b"\r\n")
    assert receiver.eof_received() is True  # kept open until the chosen protocol decides
    tls, chosen = HandOffTransport(), Recording()
    receiver.hand_off(tls, chosen)
    assert tls.protocol is chosen
    assert chosen.events == [
        ("made", tls),
        ("data", b"GET / HTTP/1.1\r\n"),
        ("data", b"\r\n"),
        ("eof", None),
    ]
    assert tls.closed  # the chosen protocol said so (its eof_received returned None)
    receiver.connection_lost(None)
    assert chosen.events[-1] == ("lost", None) and not receiver.lost


def test_a_connection_lost_before_the_hand_off_is_noted() -> None:
    receiver = _HandOff()
    receiver.connection_lost(ConnectionResetError())
    assert receiver.lost  # the slot is then given back, not handed on


# A running server, in this process ------------------------------------------------------


Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Asyncio's loop, and uvloop's (what `tidings serve` runs): they start reading a new
    connection differently (see `_TlsHandshake.data_received`)."""
    if request.param == "uvloop":
        runner: Runner = pytest.importorskip("uvloop").run
        return runner
    return asyncio.run


@contextlib.asynccontextmanager
async def tls_serving(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[HttpServer[PushApp], ssl.SSLContext]]:
    """A TLS service counting 127.0.0.1 too, and a client context trusting it."""
    cert, key = certificate(tmp_path)
    trust = ssl.create_default_context(cafile=cert)
    trust.set_alpn_protocols(["http/1.1"])
    settings.setdefault("tls_handshake_timeout", SLOW)
    async with serving(tmp_path, tls_cert=cert, tls_key=key, **settings) as server:
        yield server, trust


async def counted(server: HttpServer[PushApp], total: int, handshakes: int) -> bool:
    """True once the server counts `total` connections, `handshakes` of them in progress,
    and its metrics say the same; bounded."""
    admission = server.context.admission
    for _ in range(1000):
        if (admission.total, admission.handshakes) == (total, handshakes):
            metrics = server.app.service.metrics.render()
            return (
                f"tidings_open_connections {total}.0".encode() in metrics
                and f"tidings_tls_handshakes {handshakes}.0".encode() in metrics
            )
        await asyncio.sleep(0.01)
    return False


async def silent(port: int, source: str, count: int = 1) -> list[Client]:
    """`count` TCP connections from `source` to the TLS port that never say anything."""
    return [await Client.open(port, source) for _ in range(count)]


def test_silent_connections_fill_the_node_and_the_next_is_closed_at_once(
    tmp_path: Path, run: Runner
) -> None:
    async def scenario() -> None:
        caps = {"max_connections": "4", "max_connections_per_address": "off"}
        async with tls_serving(tmp_path, **caps) as (server, trust):
            port = server.port
            held = [client for n in range(2, 6) for client in await silent(port, f"127.0.0.{n}")]
            assert await counted(server, 4, 4)
            refused = await Client.open(port, "127.0.0.6")
            assert await refused.closed_by_server()  # within seconds: SLOW has not passed
            assert (
                b"tidings_connections_refused_node_total 1.0" in server.app.service.metrics.render()
            )
            await held[0].close()  # one gives up: a real client gets in and is served
            assert await counted(server, 3, 3)
            client = await Client.open(port, "127.0.0.7", tls=trust)
            assert (await client.exchange(HEALTH))[0] == 200
            assert await counted(server, 4, 3)  # served, no longer handshaking
            for other in (*held[1:], refused, client):
                await other.close()
            assert await counted(server, 0, 0)
            assert await settled(server.context.admission)

    run(scenario())


def test_silent_connections_count_against_their_address(tmp_path: Path, run: Runner) -> None:
    async def scenario() -> None:
        async with tls_serving(
            tmp_path, max_connections_per_address="2", max_tls_handshakes_per_address="off"
        ) as (server, trust):
            port = server.port
            admission = server.context.admission
            held = await silent(port, "127.0.0.2", 2)
            assert await counted(server, 2, 2)
            assert admission.count("127.0.0.2") == 2
            # The next one from it finishes its handshake and is answered as in cleartext.
            refused = await Client.open(port, "127.0.0.2", tls=trust)
            status, headers, body = await refused.exchange(HEALTH)
            assert status == 429 and headers["retry-after"].isdigit()
            assert json.loads(body)["errno"] == 121
            assert await refused.closed_by_server()
            other = await Client.open(port, "127.0.0.3", tls=trust)  # another address is served
            assert (await other.exchange(HEALTH))[0] == 200
            # Kept to answer 429 once they speak, REFUSING_PER_ADDRESS of them; then closed.
            held += await silent(port, "127.0.0.2", REFUSING_PER_ADDRESS)
            assert await counted(server, 3 + REFUSING_PER_ADDRESS, 2 + REFUSING_PER_ADDRESS)
            past = await Client.open(port, "127.0.0.2")
            assert await past.closed_by_server()
            for client in (*held, refused, other, past):
                await client.close()
            assert await counted(server, 0, 0)
            assert await settled(admission)

    run(scenario())


def test_handshakes_in_progress_per_address_are_capped_on_the_server(
    tmp_path: Path, run: Runner
) -> None:
    async def scenario() -> None:
        async with tls_serving(tmp_path, max_tls_handshakes_per_address="3") as (server, trust):
            port = server.port
            admission = server.context.admission
            held = await silent(port, "127.0.0.2", 3)
            assert await counted(server, 3, 3)
            assert admission.handshaking("127.0.0.2") == 3
            refused = await Client.open(port, "127.0.0.2")
            assert await refused.closed_by_server()  # at once, nothing read
            metrics = server.app.service.metrics.render()
            assert b"tidings_connections_refused_handshake_total 1.0" in metrics
            other = await Client.open(port, "127.0.0.3", tls=trust)
            assert (await other.exchange(HEALTH))[0] == 200
            await held[0].close()
            assert await counted(server, 3, 2)
            # A finished handshake no longer counts as one; the connection still counts.
            done = await Client.open(port, "127.0.0.2", tls=trust)
            assert (await done.exchange(HEALTH))[0] == 200
            assert admission.handshaking("127.0.0.2") == 2 and admission.count("127.0.0.2") == 3
            for client in (*held[1:], refused, other, done):
                await client.close()
            assert await settled(admission)

    run(scenario())


def test_every_way_a_tls_connection_ends_gives_its_count_back(tmp_path: Path, run: Runner) -> None:
    async def scenario() -> None:
        async with tls_serving(tmp_path, tls_handshake_timeout=0.5) as (server, trust):
            port = server.port
            timed_out, stalled, not_tls, reset, reset_midway = await silent(port, "127.0.0.2", 5)
            stalled.writer.write(STALLED)
            not_tls.writer.write(HEALTH)  # cleartext HTTP on the TLS port: the handshake fails
            reset.writer.transport.abort()
            reset_midway.writer.write(STALLED)
            await asyncio.sleep(0.05)
            reset_midway.writer.transport.abort()
            for client in (timed_out, stalled, not_tls):
                assert await client.closed_by_server()
            served = await Client.open(port, "127.0.0.3", tls=trust)
            assert (await served.exchange(LAST))[0] == 200
            assert await served.closed_by_server()
            aborted = await Client.open(port, "127.0.0.3", tls=trust)
            assert (await aborted.exchange(HEALTH))[0] == 200
            aborted.writer.transport.abort()
            websocket = await Client.open(port, "127.0.0.4", tls=trust)
            assert (await websocket.exchange(UPGRADE))[0] == 101  # the slot handed on again
            # httpx sets its own ALPN on the context: its own one, from the same CA file.
            h2_trust = ssl.create_default_context(cafile=tmp_path / "cert.pem")
            transport = httpx.AsyncHTTPTransport(
                verify=h2_trust, http2=True, local_address="127.0.0.5"
            )
            async with httpx.AsyncClient(transport=transport) as h2_client:
                answer = await h2_client.get(f"https://127.0.0.1:{port}/health")
                assert answer.status_code == 200 and answer.http_version == "HTTP/2"
            assert await counted(server, 1, 0)  # the WebSocket
            await websocket.close()
            for client in (timed_out, stalled, not_tls, reset, reset_midway, served, aborted):
                await client.close()
            assert await counted(server, 0, 0)
            assert await settled(server.context.admission)

    run(scenario())


def blocking_requests(port: int, cert: str, count: int) -> list[bytes]:
    """`count` TLS connections, one request each, from a thread: the ClientHello goes out
    the moment TCP connects, while the server's loop is still accepting."""
    trust = ssl.create_default_context(cafile=cert)
    statuses = []
    for _ in range(count):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as tcp,
            trust.wrap_socket(tcp, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(LAST)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            statuses.append(answer.split(b"\r\n", 1)[0])
    return statuses


def test_a_client_hello_read_before_tls_starts_is_not_lost(tmp_path: Path, run: Runner) -> None:
    # uvloop reads a new connection right after connection_made, before start_tls takes
    # it: the ClientHello is then kept and given to the TLS layer (most of these, seen).
    async def scenario() -> None:
        async with tls_serving(tmp_path) as (server, _):
            cert = str(tmp_path / "cert.pem")
            statuses = await asyncio.to_thread(blocking_requests, server.port, cert, 20)
            assert statuses == [b"HTTP/1.1 200 OK"] * 20
            assert await counted(server, 0, 0)

    run(scenario())


def request_with_finished(port: int, cert: str) -> bytes:
    """One TLS connection whose request goes out in the same write as the client's
    Finished (the server's handshake ends and the request arrives at once); the answer."""
    trust = ssl.create_default_context(cafile=cert)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = trust.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as tcp:
        for _ in range(100):  # a few round trips at most
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                tcp.sendall(outgoing.read())
                incoming.write(tcp.recv(65536) or b"")
        tls.write(LAST)
        tcp.sendall(outgoing.read())
        answer = b""
        while chunk := tcp.recv(65536):
            incoming.write(chunk)
            try:
                while data := tls.read(65536):
                    answer += data
            except ssl.SSLWantReadError:
                continue
            break  # b"": the server's close_notify, the answer is whole
    return answer


def test_a_request_that_comes_with_the_handshake_is_not_lost(tmp_path: Path, run: Runner) -> None:
    # asyncio decrypts it before start_tls returns: it waits for the chosen protocol.
    async def scenario() -> None:
        async with tls_serving(tmp_path) as (server, _):
            cert = str(tmp_path / "cert.pem")
            for _ in range(3):
                answer = await asyncio.to_thread(request_with_finished, server.port, cert)
                assert answer.startswith(b"HTTP/1.1 200 OK")
            assert await counted(server, 0, 0)

    run(scenario())


def test_a_shutdown_gives_back_the_handshakes_in_progress(tmp_path: Path, run: Runner) -> None:
    async def scenario() -> None:
        async with tls_serving(tmp_path) as (server, _):
            held = await silent(server.port, "127.0.0.2", 3)
            assert await counted(server, 3, 3)
        assert await settled(server.context.admission)
        for client in held:
            assert await client.closed_by_server()
            await client.close()

    run(scenario())


def test_a_real_server_counts_tls_handshakes(tmp_path: Path) -> None:
    # `tidings serve` (uvloop): 127.0.0.2 counts, the metrics are read from 127.0.0.1.
    settings = {
        "max_tls_handshakes_per_address": "2",
        "tls_handshake_timeout": str(SLOW),
        "rate_limit_exempt": "127.0.0.1/32",
    }
    with tls_serve(tmp_path, **settings) as (port, cert):
        asyncio.run(real_server_checks(port, cert))


async def real_server_checks(port: int, cert: str) -> None:
    trust = ssl.create_default_context(cafile=cert)
    trust.set_alpn_protocols(["http/1.1"])
    held = await silent(port, "127.0.0.2", 2)
    refused = await Client.open(port, "127.0.0.2")
    assert await refused.closed_by_server()
    other = await Client.open(port, "127.0.0.3", tls=trust)
    assert (await other.exchange(HEALTH))[0] == 200
    metrics = await Client.open(port, "127.0.0.1", tls=trust)
    status, _, body = await metrics.exchange(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    assert status == 200
    # The two silent ones, the served one and this one; the refused one is not left over.
    assert b"tidings_open_connections 4.0" in body
    assert b"tidings_tls_handshakes 2.0" in body
    assert b"tidings_connections_refused_handshake_total 1.0" in body
    for client in (*held, refused, other, metrics):
        await client.close()
