"""A flood of /health asks the store once per HEALTH_PING_EVERY, not once per request:
each ping took a store connection (on PostgreSQL, one of the pool the pushes wait for),
so anyone could starve the pushes of other users with a cheap, unauthenticated GET."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from support.service import running_service
from tidings.service import core
from tidings.service.store.base import StoreUnavailable


async def test_a_health_flood_pings_the_store_once_per_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "HEALTH_PING_EVERY", 3600.0, raising=False)  # one period
    async with running_service(tmp_path) as running:
        assert running.service is not None
        store = running.service.store
        pings = 0
        ping = store.ping

        async def counted_ping() -> None:
            nonlocal pings
            pings += 1
            await ping()

        monkeypatch.setattr(store, "ping", counted_ping)
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.get(running.url + "/health") for _ in range(200))
            )
            answers += [await client.get(running.url + "/health") for _ in range(20)]
    assert {answer.status_code for answer in answers} == {200}
    assert pings == 1


async def test_health_still_sees_the_store_go_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "HEALTH_PING_EVERY", 0.0)  # every request asks again
    async with running_service(tmp_path) as running:
        assert running.service is not None
        store = running.service.store
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(running.url + "/health")).json()["store"] == "ok"

            async def down() -> None:
                raise StoreUnavailable("down for the test")

            monkeypatch.setattr(store, "ping", down)
            answer = await client.get(running.url + "/health")
    assert answer.status_code == 503
    assert answer.json()["store"] == "unavailable"
