"""HTTP/2 requests whose `host` names another entity than `:authority` (RFC 9113
section 8.3.1): malformed, refused by h2's inbound header validation with a connection
error (GOAWAY PROTOCOL_ERROR), never routed. This pins that validation on."""

from __future__ import annotations

from pathlib import Path

import h2.connection
import h2.errors

from security.hostile_clients import H2Script, h2_exchange, h2_request
from support.service import running_service


def _with_authority(authority: str, host: list[str]) -> H2Script:
    def script(conn: h2.connection.H2Connection) -> bytes:
        pairs = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", b"/health"),
        ]
        pairs += [(b"host", value.encode()) for value in host]
        conn.send_headers(1, pairs, end_stream=True)
        return conn.data_to_send()

    return script


async def test_a_host_that_differs_from_the_authority_is_refused(tmp_path: Path) -> None:
    """A proxy routing by `:authority` and the service reading `host` must not disagree
    on whom a request is for (the HTTP/1.1 twin, two Hosts, is a 400)."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        for host in (["evil.example"], ["127.0.0.1", "evil.example"], ["127.0.0.1"] * 2):
            outcome = await h2_exchange(port, _with_authority("127.0.0.1", host))
            assert outcome.kind == "goaway", (host, outcome)
            assert outcome.code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        outcome = await h2_exchange(port, _with_authority("127.0.0.1", ["127.0.0.1"]))
        assert outcome.status == 200, outcome
        assert (await h2_exchange(port, h2_request("GET", "/health"))).status == 200


async def test_a_request_without_authority_or_host_is_refused(tmp_path: Path) -> None:
    """No name for the target at all: the HTTP/1.1 twin, a request without Host, is a
    400; here h2's validation ends the connection the same way as a differing host."""

    def script(conn: h2.connection.H2Connection) -> bytes:
        pairs = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/health")]
        conn.send_headers(1, pairs, end_stream=True)
        return conn.data_to_send()

    async with running_service(tmp_path) as running:
        outcome = await h2_exchange(running.config.port, script)
        assert outcome.kind == "goaway", outcome
        assert outcome.code == h2.errors.ErrorCodes.PROTOCOL_ERROR
