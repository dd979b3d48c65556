"""Hardening found by review: canonical tokens, expired deletes, config ranges, read pausing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import RunningService, running_service
from tidings.service.config import ServiceConfig
from tidings.service.http import websocket as ws
from tidings.webpush import b64url_decode


async def test_a_token_has_one_spelling(service: RunningService) -> None:
    """Base64url's unused trailing bits must not give a second URL for one resource."""
    agent = await service.agent()
    registration = await agent.register()
    prefix, token = registration.endpoint.rsplit("/", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    variants = [c for c in alphabet if c != token[-1] and alphabet.index(c) >> 2 == last >> 2]
    assert variants  # the token's last character carries unused bits
    twin = token[:-1] + variants[0]
    assert b64url_decode(twin) == b64url_decode(token)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{prefix}/{twin}", headers={"ttl": "0"})
        assert response.status_code == 404
        assert (await client.post(registration.endpoint, headers={"ttl": "0"})).status_code == 201
    await agent.close()


async def test_delete_of_an_expired_message_is_404(tmp_path: Path) -> None:
    """Once its TTL has passed a message is gone, even before the sweep removes it."""
    async with running_service(tmp_path, expiry_sweep_interval=3600) as service:
        agent = await service.agent()
        registration = await agent.register()
        await agent.close()
        async with httpx.AsyncClient() as client:
            pushed = await client.post(registration.endpoint, headers={"ttl": "1"})
            assert pushed.status_code == 201
            await asyncio.sleep(1.2)
            gone = await client.delete(pushed.headers["location"])
            assert gone.status_code == 404


@pytest.mark.parametrize(
    ("setting", "value"),
    [("port", 70000), ("port", True), ("max_ttl", -1), ("max_body", 100), ("workers", 0)],
)
def test_out_of_range_settings_are_refused(setting: str, value: object) -> None:
    with pytest.raises(ValueError, match=setting):
        ServiceConfig().with_overrides({setting: value})


class _SlowSession:
    """A session whose handling of a frame never finishes (a busy store, say)."""

    uaid = None
    peer = "test"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    def handle_now(self, text: str) -> bool:
        return False  # every frame takes the queued path

    async def on_text(self, text: str) -> None:
        self.started.set()
        await asyncio.Event().wait()

    def on_disconnect(self) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.paused = False
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _masked(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


async def test_a_client_flooding_frames_is_paused_not_buffered(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        assert service.service is not None
        transport: Any = _Transport()
        protocol = ws.PushWebSocket(transport, service.service, "test", max_message=65536)
        session = _SlowSession()
        protocol.session = session  # type: ignore[assignment]
        frames = b"".join(_masked(json.dumps({"n": i})) for i in range(ws.MAX_QUEUED_FRAMES + 5))
        protocol.data_received(frames)
        await session.started.wait()
        assert transport.paused
        protocol.connection_lost(None)


async def test_an_idle_http2_connection_is_closed(tmp_path: Path) -> None:
    """A connection that opens HTTP/2 and then asks nothing does not hold a socket forever."""
    from tidings.http2 import H2Client

    async with running_service(tmp_path, keepalive_timeout=0.3) as service:
        client = await H2Client.connect(service.url)
        assert (await client.request("GET", "/health")).status == 200
        await asyncio.wait_for(client.closed.wait(), 5)  # closed after 0.3 s of idleness
