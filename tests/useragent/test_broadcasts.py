"""The Python user agent follows Megaphone broadcasts through a real Tidings service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.service import RunningService, put_broadcast, running_service
from tidings.useragent import protocol as fp

from .helpers import make_agent

TOKEN = "ua-admin"
RS = "remote-settings/monitor_changes"


@pytest.fixture
async def admin_service(tmp_path: Path) -> AsyncIterator[RunningService]:
    async with running_service(tmp_path / "svc", dashboard_token=TOKEN) as running:
        yield running


async def set_version(service: RunningService, broadcast_id: str, version: str) -> None:
    answer = await put_broadcast(service.url, broadcast_id, version, TOKEN)
    assert answer.status_code == 200, answer.text


def test_hello_carries_the_followed_broadcasts() -> None:
    frame = fp.hello_frame(None, {RS: '"1"'})
    assert '"broadcasts":{"remote-settings/monitor_changes":"\\"1\\""}' in frame
    assert fp.broadcast_subscribe_frame({"a": "1"}) == (
        '{"messageType":"broadcast_subscribe","broadcasts":{"a":"1"}}'
    )


async def test_versions_arrive_in_hello_on_subscribe_and_on_change(
    admin_service: RunningService, tmp_path: Path
) -> None:
    await set_version(admin_service, RS, '"100"')
    await set_version(admin_service, "kinto:1", "k1")
    changes: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    ua = make_agent(admin_service.ws_url, tmp_path / "ua")
    await ua.subscribe_broadcasts({RS: '"90"'})  # before connecting: goes in the hello
    ua.on_broadcast(changes.put_nowait)
    async with ua:
        await ua.wait_connected(10)
        assert await asyncio.wait_for(changes.get(), 10) == {RS: '"100"'}
        assert ua.broadcasts == {RS: '"100"'}
        await ua.subscribe_broadcasts({"kinto:1": "", "nope": ""})
        assert await asyncio.wait_for(changes.get(), 10) == {"kinto:1": "k1"}
        assert ua.transport.broadcast_errors == {"nope": "Broadcast not found"}  # type: ignore[attr-defined]
        await set_version(admin_service, RS, '"101"')
        assert await asyncio.wait_for(changes.get(), 10) == {RS: '"101"'}
        assert ua.broadcasts == {RS: '"101"', "kinto:1": "k1", "nope": ""}


async def test_the_followed_set_is_bounded(tmp_path: Path) -> None:
    ua = make_agent("ws://127.0.0.1:9/", tmp_path / "ua")
    await ua.subscribe_broadcasts({f"id{i}": "" for i in range(64)})
    with pytest.raises(ValueError):
        await ua.subscribe_broadcasts({"one-more": ""})
    assert len(ua.broadcasts) == 64
