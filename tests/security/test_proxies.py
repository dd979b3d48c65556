"""Clients behind reverse proxies: Forwarded / X-Forwarded-For from trusted proxies only.

The service's tests connect from 127.0.0.1; loopback is taken out of the exempt list so
that the per-address limits count it, and trusted (or not) as each test says.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import websockets
from click.testing import CliRunner

from support.service import running_service
from tidings.service.config import ServiceConfig
from tidings.service.forwarded import parse_proxies, real_client

TRUSTED = parse_proxies("10.0.0.0/8, 2001:db8:ffff::/48")


# The algorithm, without sockets -------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        # An untrusted peer: whatever it writes is ignored.
        ("198.51.100.7:5000", {"x-forwarded-for": "203.0.113.9"}, "198.51.100.7:5000"),
        ("198.51.100.7:5000", {"forwarded": "for=203.0.113.9"}, "198.51.100.7:5000"),
        ("[2001:db8::1]:443", {"x-forwarded-for": "203.0.113.9"}, "[2001:db8::1]:443"),
        # A trusted peer: the rightmost hop that is not a trusted proxy.
        ("10.0.0.2:5000", {"x-forwarded-for": "203.0.113.9"}, "203.0.113.9"),
        ("10.0.0.2:5000", {"x-forwarded-for": "1.1.1.1, 203.0.113.9, 10.1.2.3"}, "203.0.113.9"),
        ("10.0.0.2:5000", {"x-forwarded-for": "10.9.9.9, 10.1.2.3"}, "10.9.9.9"),
        ("10.0.0.2:5000", {"x-forwarded-for": "[2001:db8::5]:80"}, "[2001:db8::5]"),
        ("10.0.0.2:5000", {"x-forwarded-for": "203.0.113.9:4711"}, "203.0.113.9"),
        ("10.0.0.2:5000", {"forwarded": 'for="[2001:db8:cafe::17]:4711"'}, "[2001:db8:cafe::17]"),
        (
            "10.0.0.2:5000",
            {"forwarded": "for=192.0.2.60;proto=http;by=203.0.113.43, for=10.3.3.3"},
            "192.0.2.60",
        ),
        ("10.0.0.2:5000", {"forwarded": 'FOR="192.0.2.60";host="a,b"'}, "192.0.2.60"),
        ("::ffff:10.0.0.2:5000", {"x-forwarded-for": "203.0.113.9"}, "203.0.113.9"),
        ("2001:db8:ffff::1:5000", {"x-forwarded-for": "203.0.113.9"}, "203.0.113.9"),
        # Both headers, agreeing (a proxy that sets both).
        (
            "10.0.0.2:5000",
            {"forwarded": "for=203.0.113.9", "x-forwarded-for": "203.0.113.9"},
            "203.0.113.9",
        ),
    ],
)
def test_real_client(peer: str, headers: dict[str, str], client: str) -> None:
    assert real_client(peer, headers, TRUSTED) == client


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-for": ""},
        {"x-forwarded-for": "203.0.113.9, not-an-address"},
        {"x-forwarded-for": "203.0.113.9,,"},
        {"x-forwarded-for": "unknown"},
        {"x-forwarded-for": "203.0.113.9:port"},
        {"x-forwarded-for": ", ".join(["203.0.113.9"] * 65)},
        {"forwarded": "for=unknown"},
        {"forwarded": "for=_hidden"},
        {"forwarded": 'for="[2001:db8::1'},
        {"forwarded": 'for="203.0.113.9'},
        {"forwarded": "proto=https"},
        {"forwarded": "for"},
        {"forwarded": "for=203.0.113.9;for=203.0.113.8"},
        {"forwarded": "for=[2001:db8::1]x"},
        # A proxy setting one header passes the other through: they disagree, so neither.
        {"forwarded": "for=203.0.113.1", "x-forwarded-for": "203.0.113.9"},
    ],
)
def test_malformed_headers_fall_back_to_the_peer(headers: dict[str, str]) -> None:
    assert real_client("10.0.0.2:5000", headers, TRUSTED) == "10.0.0.2:5000"


def test_nothing_is_read_without_trusted_proxies() -> None:
    assert real_client("10.0.0.2:5000", {"x-forwarded-for": "203.0.113.9"}, []) == "10.0.0.2:5000"


def test_configuration() -> None:
    assert ServiceConfig(trusted_proxies="10.0.0.0/8, ::1").trusted_proxies == "10.0.0.0/8, ::1"
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServiceConfig(trusted_proxies="10.0.0.0/8,proxy.example")


def test_cli_flag_is_repeatable(monkeypatch: pytest.MonkeyPatch) -> None:
    from tidings.cli import serve as serve_cli

    seen = []
    monkeypatch.setattr(serve_cli, "_announce", lambda config: seen.append(config))
    monkeypatch.setattr("tidings.service.run.serve", lambda config: None)
    result = CliRunner().invoke(
        serve_cli.serve, ["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"]
    )
    assert result.exit_code == 0, result.output
    assert parse_proxies(seen[0].trusted_proxies) == parse_proxies("10.0.0.0/8,::1")


# Over real sockets ----------------------------------------------------------------------

LIMITED = {"rate_limit_exempt": "", "rate_push_address": "2/min", "rate_connect_address": "1/min"}


async def _pushes(
    client: httpx.AsyncClient, url: str, forwarded: list[str], version: str = "HTTP/1.1"
) -> list[int]:
    """Statuses of pushes to a bad endpoint (the address is charged before the token)."""
    statuses = []
    for value in forwarded:
        answer = await client.post(
            url + "/push/nothing", headers={"ttl": "0", "x-forwarded-for": value}
        )
        assert answer.http_version == version
        statuses.append(answer.status_code)
    return statuses


async def test_spoofed_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    async with running_service(tmp_path, trusted_proxies="10.0.0.0/8", **LIMITED) as running:
        async with httpx.AsyncClient(timeout=10) as client:
            # Each request claims another client; all are counted against 127.0.0.1.
            statuses = await _pushes(client, running.url, ["203.0.113.1", "203.0.113.2"] * 2)
        assert statuses == [404, 404, 429, 429]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_a_trusted_proxy_names_the_real_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, http2: bool
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.access")
    version = "HTTP/2" if http2 else "HTTP/1.1"
    async with (
        running_service(tmp_path, trusted_proxies="127.0.0.1/32", **LIMITED) as running,
        httpx.AsyncClient(timeout=10, http1=not http2, http2=http2) as client,
    ):
        first = await _pushes(client, running.url, ["203.0.113.1"] * 3, version)
        # Another client behind the same proxy has its own bucket.
        second = await _pushes(client, running.url, ["198.51.100.1, 203.0.113.2"], version)
        # A client behind the proxy cannot name another client by adding hops.
        third = await _pushes(client, running.url, ["203.0.113.2, 203.0.113.1"], version)
    assert first == [404, 404, 429]
    assert second == [404]
    assert third == [429]
    logged = [record.getMessage() for record in caplog.records if record.name == "tidings.access"]
    assert any(line.startswith("203.0.113.2 ") for line in logged), logged


async def test_websocket_upgrades_are_counted_per_real_client(tmp_path: Path) -> None:
    async with running_service(tmp_path, trusted_proxies="127.0.0.1/32", **LIMITED) as running:

        async def connect(client: str) -> int:
            try:
                ws = await websockets.connect(
                    running.ws_url, additional_headers={"forwarded": f"for={client}"}
                )
            except websockets.InvalidStatus as exc:
                return exc.response.status_code
            await ws.close()
            return 101

        assert await connect("203.0.113.1") == 101
        assert await connect("203.0.113.1") == 429
        assert await connect("203.0.113.2") == 101
