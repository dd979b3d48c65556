"""Open connections are capped per address and per process: one client cannot hold them all.

Before the caps, one address (or one IPv6 /64) could open connections until the process
ran out of file descriptors, and then nobody else got in. The server tests leave
127.0.0.1 out of the exempt networks so that it counts, and use 127.0.0.2 as another
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from security.hostile_clients import frame, h2_exchange, h2_request
from security.test_tls_handshake import certificate
from support.service import ServiceProcess, running_service
from tidings.service.config import ServiceConfig, default_max_connections, load_config
from tidings.service.http.admission import REFUSING_PER_ADDRESS, ConnectionAdmission
from tidings.service.http.server import HttpServer
from tidings.service.push_app import PushApp, connection_key
from tidings.service.run import OPEN_FILES_CEILING

DEADLINE = 10.0
HEALTH = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
LAST = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
UPGRADE = (
    b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)

# Sans-I/O: the counting ----------------------------------------------------------------


def test_the_cap_per_address_refuses_then_admits_again() -> None:
    admission = ConnectionAdmission(per_address=2, max_connections=None)
    first, second = admission.open("192.0.2.1"), admission.open("192.0.2.1")
    assert first is not None and second is not None
    assert not first.refused and not second.refused
    third = admission.open("192.0.2.1")
    assert third is not None and third.refused  # answered 429, then closed
    other = admission.open("192.0.2.2")
    assert other is not None and not other.refused
    admission.close(third)
    admission.close(first)
    again = admission.open("192.0.2.1")
    assert again is not None and not again.refused
    for slot in (second, other, again):
        admission.close(slot)
    assert admission.total == 0 and len(admission) == 0  # entries go at zero


def test_pending_refusals_per_address_are_bounded() -> None:
    admission = ConnectionAdmission(per_address=1, max_connections=None)
    assert admission.open("192.0.2.1") is not None
    refusing = [admission.open("192.0.2.1") for _ in range(REFUSING_PER_ADDRESS)]
    assert all(slot is not None and slot.refused for slot in refusing)
    assert admission.open("192.0.2.1") is None  # closed at once: no more held to answer
    assert admission.total == 1 + REFUSING_PER_ADDRESS


def test_the_node_cap_counts_every_address() -> None:
    admission = ConnectionAdmission(per_address=None, max_connections=2)
    slots = [admission.open("192.0.2.1"), admission.open("198.51.100.1")]
    assert admission.open("203.0.113.1") is None
    assert admission.refused_node == 1
    slot = slots[0]
    assert slot is not None
    admission.close(slot)
    assert admission.open("203.0.113.1") is not None


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # as limits.address_key
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("127.0.0.9", None),  # rate_limit_exempt
        ("::1", None),
        ("10.1.2.3", None),  # a trusted proxy: it carries many clients
        ("::ffff:10.1.2.3", None),
    ],
)
def test_connection_key(address: str, key: str | None) -> None:
    config = ServiceConfig(trusted_proxies="10.0.0.0/8")
    assert connection_key(config)(address) == key


def test_an_ipv6_64_shares_one_cap() -> None:
    key = connection_key(ServiceConfig())
    admission = ConnectionAdmission(per_address=2, max_connections=None, key_of=key)
    assert admission.open("2001:db8:1:2::1") is not None
    assert admission.open("2001:db8:1:2:abcd::99") is not None
    third = admission.open("2001:db8:1:2:ffff:1:2:3")
    assert third is not None and third.refused  # the same /64
    fourth = admission.open("2001:db8:1:3::1")
    assert fourth is not None and not fourth.refused  # the next /64 is another
    loopback = [admission.open("::1") for _ in range(10)]
    assert all(slot is not None and not slot.refused for slot in loopback)  # exempt


@pytest.mark.parametrize(
    ("settings", "caps"),
    [
        ({"max_connections": "off", "max_connections_per_address": "off"}, (None, None)),
        ({"max_connections": "100", "max_connections_per_address": "7"}, (100, 7)),
        ({}, (default_max_connections(), 4096)),
    ],
)
def test_caps_from_settings(settings: dict[str, str], caps: tuple[int | None, int | None]) -> None:
    assert ServiceConfig(**settings).connection_caps() == caps


@pytest.mark.parametrize(
    "settings",
    [{"max_connections": "0"}, {"max_connections_per_address": "auto"}, {"max_connections": "x"}],
)
def test_bad_caps_are_configuration_errors(settings: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        ServiceConfig(**settings)


def test_caps_from_toml_and_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "tidings.toml"
    file.write_text("[serve]\nmax_connections = 5000\nmax_connections_per_address = 'off'\n")
    assert load_config(file, environ={}).connection_caps() == (5000, None)
    environ = {"TIDINGS_MAX_CONNECTIONS_PER_ADDRESS": "64"}
    assert load_config(file, environ=environ).connection_caps() == (5000, 64)


@pytest.mark.parametrize(
    ("soft", "cap"), [(20_000, 18_000), (1024, 768), (256, 128), (100_000, 90_000)]
)
def test_the_default_node_cap_keeps_a_reserve(
    monkeypatch: pytest.MonkeyPatch, soft: int, cap: int
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, soft))
    assert default_max_connections() == cap


# A running server ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[HttpServer[PushApp]]:
    """A service that counts 127.0.0.1 (only ::1 exempt), for the server tests."""
    async with running_service(tmp_path, rate_limit_exempt="::1", **settings) as running:
        assert running.server is not None
        yield running.server


async def settled(admission: ConnectionAdmission) -> bool:
    """True once no connection is counted (the server has seen every close); bounded."""
    for _ in range(1000):
        if admission.total == 0:
            return len(admission) == 0  # no entry left behind at zero
        await asyncio.sleep(0.01)
    return False


class Client:
    """One raw HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, port: int, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> Client:
        """Connect from `source` (over TLS with `tls`; without, on a TLS port: silent)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=tls
        )
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send a request, read its answer (empty status 0 when the server closed)."""
        self.writer.write(request)
        async with asyncio.timeout(DEADLINE):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body

    async def closed_by_server(self) -> bool:
        """True once the server closes (EOF, after whatever it still sent)."""
        async with asyncio.timeout(DEADLINE):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionError:
                pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def served(port: int, *sources: str) -> list[Client]:
    """A connection from each source address, one after another, each served (and open)."""
    clients = []
    for source in sources:
        client = await Client.open(port, source)
        assert (await client.exchange(HEALTH))[0] == 200
        clients.append(client)
    return clients


async def test_one_address_over_its_cap_is_answered_429_and_others_get_in(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, max_connections_per_address="2") as server:
        port = server.port
        held = await served(port, "127.0.0.1", "127.0.0.1")
        refused = await Client.open(port)
        status, headers, body = await refused.exchange(HEALTH)
        assert status == 429
        assert headers["retry-after"].isdigit()
        assert headers["connection"] == "close"
        error = json.loads(body)
        assert error["code"] == 429 and error["errno"] == 121
        assert "connections" in error["message"]
        assert await refused.closed_by_server()
        metrics = server.app.service.metrics.render()
        assert b"tidings_connections_refused_address_total 1.0" in metrics
        # Another address is not held back, and the held connections still work.
        other = await Client.open(port, "127.0.0.2")
        assert (await other.exchange(HEALTH))[0] == 200
        assert (await held[1].exchange(HEALTH))[0] == 200
        # One closed: a new connection from the first address is served again.
        assert (await held[0].exchange(LAST))[0] == 200
        assert await held[0].closed_by_server()
        again = await Client.open(port)
        assert (await again.exchange(HEALTH))[0] == 200
        for client in (held[1], other, again, refused):
            await client.close()
        assert await settled(server.context.admission)


async def upgrades(port: int, full: str, other: str) -> None:
    """An upgrade from the address `full` (at its cap) gets 429; one from `other` 101."""
    refused = await Client.open(port, full)
    status, headers, body = await refused.exchange(UPGRADE)
    assert status == 429 and "retry-after" in headers
    assert json.loads(body)["errno"] == 121
    assert await refused.closed_by_server()
    accepted = await Client.open(port, other)
    assert (await accepted.exchange(UPGRADE))[0] == 101
    for client in (refused, accepted):
        await client.close()


async def test_an_upgrade_over_the_cap_is_refused_before_it(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections_per_address="1") as server:
        (held,) = await served(server.port, "127.0.0.1")
        await upgrades(server.port, "127.0.0.1", "127.0.0.2")
        await held.close()


async def test_http2_over_the_cap_gets_429_then_goaway(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections_per_address="1") as server:
        (held,) = await served(server.port, "127.0.0.1")
        outcome = await h2_exchange(server.port, h2_request("GET", "/health"))
        assert outcome.status == 429
        assert "retry-after" in outcome.headers
        assert json.loads(outcome.body)["errno"] == 121
        await held.close()


async def test_the_node_cap_closes_at_once_and_recovers(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections="3", max_connections_per_address="off") as server:
        port = server.port
        held = await served(port, "127.0.0.1", "127.0.0.2", "127.0.0.3")
        refused = await Client.open(port, "127.0.0.4")
        assert await refused.closed_by_server()  # nothing read, nothing held
        assert b"tidings_connections_refused_node_total 1.0" in server.app.service.metrics.render()
        assert (await held[2].exchange(HEALTH))[0] == 200  # the open ones are untouched
        assert (await held[0].exchange(LAST))[0] == 200
        assert await held[0].closed_by_server()
        again = await Client.open(port, "127.0.0.4")
        assert (await again.exchange(HEALTH))[0] == 200
        for client in (*held, refused, again):
            await client.close()
        assert await settled(server.context.admission)


async def test_every_close_path_gives_its_slot_back(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections_per_address="3", request_timeout=0.2) as server:
        port = server.port
        admission = server.context.admission
        aborted = await Client.open(port)
        assert (await aborted.exchange(HEALTH))[0] == 200
        aborted.writer.transport.abort()  # a reset, not a close
        timed_out = await Client.open(port, "127.0.0.2")
        timed_out.writer.write(b"GET /health HTTP/1.1\r\n")  # never finished
        assert await timed_out.closed_by_server()
        websocket = await Client.open(port, "127.0.0.3")
        assert (await websocket.exchange(UPGRADE))[0] == 101
        h2_outcome = await h2_exchange(port, h2_request("GET", "/health"))
        assert h2_outcome.status == 200
        (held,) = await served(port, "127.0.0.4")
        assert admission.count("127.0.0.4") == 1
        await timed_out.close()
        await aborted.close()
        # The shutdown closes the held connection and says 1001 to the WebSocket.
    assert await held.closed_by_server()
    websocket.writer.write(frame(0x8, struct.pack("!H", 1000)))  # the close handshake
    assert await websocket.closed_by_server()
    await held.close()
    await websocket.close()
    assert await settled(admission)


async def test_a_client_saying_connection_close_is_closed(tmp_path: Path) -> None:
    # httptools forgets `Connection: close` once a message is complete: the server read
    # it too late and kept such connections open until the keep-alive timeout.
    async with serving(tmp_path) as server:
        client = await Client.open(server.port)
        status, headers, _ = await client.exchange(LAST)
        assert status == 200 and headers["connection"] == "close"
        assert await client.closed_by_server()
        await client.close()


async def test_over_tls_the_cap_holds_too(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    client_tls = ssl.create_default_context(cafile=cert)
    client_tls.set_alpn_protocols(["http/1.1"])
    async with serving(
        tmp_path, max_connections_per_address="1", tls_cert=cert, tls_key=key
    ) as server:
        clients = []
        for expected in (200, 429):  # one at a time: the first is counted before the next
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_tls)
            clients.append(Client(reader, writer))
            status, _, body = await clients[-1].exchange(HEALTH)
            assert status == expected
        assert json.loads(body)["errno"] == 121
        for client in clients:
            await client.close()
        assert await settled(server.context.admission)


async def test_a_real_server_caps_an_address(tmp_path: Path) -> None:
    # `tidings serve` (uvloop), the settings from a TOML file; 127.0.0.2 counts.
    settings = tmp_path / "caps.toml"
    settings.write_text('max_connections_per_address = 2\nrate_limit_exempt = "127.0.0.1/32"\n')
    process = ServiceProcess(tmp_path / "service", args=["--config", str(settings)])
    process.start()
    try:
        held = await served(process.port, "127.0.0.2", "127.0.0.2")
        await upgrades(process.port, "127.0.0.2", "127.0.0.3")
        for client in held:
            await client.close()
    finally:
        assert process.stop() == 0


def test_serve_lifts_its_soft_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    # Started with a soft limit of 512, the node would refuse past 256 connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard open-file limit here ({hard}) leaves nothing to lift")
    process = ServiceProcess(tmp_path / "service")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        process.start()  # the child inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert process.process is not None
        limits = Path(f"/proc/{process.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        child_soft, child_hard = line.split()[3:5]
        assert child_soft == (str(OPEN_FILES_CEILING) if child_hard == "unlimited" else child_hard)
    finally:
        assert process.stop() == 0
