"""The fast path of live_acks.py on PostgreSQL: `PostgresStore.check_message` reads the
push function's checks, so quick acks are answered without storing, refusals come
before the write, and a signed push's final status is committed before its 201."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.test_live_acks import (
    Calls,
    auto_ack,
    post,
    session_of,
    settled,
    signed_push_reads_acknowledged,
)
from store.engines import postgres_database
from support.service import RunningService, running_service
from tidings.service.keyfile import write_keys
from tidings.service.tokens import TokenSealer


@pytest.fixture
async def quick_pg(tmp_path: Path) -> AsyncIterator[RunningService]:
    """A service on a PostgreSQL database of its own, waiting up to 5 s for a quick ack
    (2 messages stored at most per subscription)."""
    key_file = tmp_path / "secrets.json"  # a shared store wants a key file made beforehand
    write_keys(key_file, {1: TokenSealer.new_key()}, 1)
    async with (
        postgres_database() as url,
        running_service(
            tmp_path,
            store=url,
            secrets=str(key_file),
            live_ack_wait=5.0,
            max_messages_per_subscription=2,
        ) as running,
    ):
        yield running


async def ack_measured(service: RunningService, uaid: str) -> None:
    """Until the user agent's connection has acknowledged a push (its round trip known)."""
    for _ in range(500):
        if session_of(service, uaid).ack_round_trip != math.inf:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no acknowledgement")


async def test_quick_acks_are_answered_without_storing(quick_pg: RunningService) -> None:
    assert quick_pg.service is not None
    agent = await quick_pg.agent()
    registration, full = await agent.register(), await agent.register()
    for _ in range(2):  # they stay stored: the subscription's quota is reached
        assert (await post(full.endpoint)).status_code == 201
        await agent.next_notification(ack=False)
    stores = Calls(quick_pg, "store_message")
    seen: list[str] = []
    acker = asyncio.ensure_future(auto_ack(agent, seen))
    try:
        for n in range(6):
            assert (await post(registration.endpoint)).status_code == 201, n
            await ack_measured(quick_pg, agent.uaid)
        # The first was stored (no ack measured yet), the others answered by their acks.
        assert stores.count == 1
        assert quick_pg.service.metrics.acknowledged_unstored_total == 5
        assert await settled(quick_pg) == 2  # the unacknowledged ones
        response = await post(full.endpoint)  # refused before anything is written
        assert response.status_code == 429, response.text
        await asyncio.sleep(0.2)
        assert len(seen) == 6 and stores.count == 1
    finally:
        acker.cancel()
        await agent.close()


async def test_a_signed_push_acknowledged_unstored_reads_acknowledged(
    quick_pg: RunningService,
) -> None:
    """Its final status joins group commit; the 201 comes after that commit."""
    stores = Calls(quick_pg, "store_message")

    async def first_acknowledged(uaid: str) -> None:
        await ack_measured(quick_pg, uaid)  # the next is acknowledged unstored

    await signed_push_reads_acknowledged(quick_pg, first_acknowledged)
    assert stores.count == 1
