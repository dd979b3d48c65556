"""A node stopping gives up its live receipts (TTL-0 messages sent live, not yet
acknowledged) in batches: one Redis round trip per LIVE_FORGET_BATCH of them, where it
made one per receipt (10,000 at most), and still exactly one receipt per message when
another node took some of them first."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from store.engines import delete_prefix, redis_url, require_redis
from support.service import running_service
from tidings.service.cluster import LIVE_FORGET_BATCH
from tidings.service.cluster.redis_bus import RedisBus
from tidings.service.store import Receipt

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

DEL = b"$3\r\nDEL\r\n"  # a DEL command as RESP puts it


class Sent:
    """What this process wrote to Redis: each write is one round trip."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def with_del(self) -> list[bytes]:
        return [write for write in self.writes if DEL in write]


def count_writes(monkeypatch: pytest.MonkeyPatch) -> Sent:
    sent = Sent()
    send = Connection.send_packed_command

    async def counted(
        self: Connection, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> Any:
        if isinstance(command, str):
            packed = command.encode()
        else:
            packed = command if isinstance(command, bytes) else b"".join(command)
        sent.writes.append(packed)
        return await send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    return sent


async def test_a_stopping_node_gives_up_its_live_receipts_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_redis()
    bus_url = redis_url()
    count = 2 * LIVE_FORGET_BATCH + 100
    other = aioredis.from_url(bus_url.partition("?")[0])
    try:
        async with running_service(tmp_path, cluster=bus_url, node_id="node-a") as node:
            service = node.service
            assert service is not None and isinstance(service.cluster, RedisBus)
            bus = service.cluster
            receipt_id = "receipt-subscription"
            await service.store.add_receipt_subscription(receipt_id, time.time())
            ids = [f"message-{i}" for i in range(count)]
            for message_id in ids:  # as _await_live_ack and the push path leave them
                receipt = Receipt(0, receipt_id, "ua", "channel", message_id, 0, time.time())
                service._live_receipts[message_id] = receipt
                await bus.share_live_receipt(message_id, receipt_id)
            # Another node took the acknowledgements of some (its take_live_receipt).
            taken = set(ids[::7])
            for message_id in taken:
                assert await other.getdel(f"{bus.prefix}live:{message_id}") is not None

            sent = count_writes(monkeypatch)
            await service.give_up_live_receipts(math.inf)  # what stop() does
            monkeypatch.undo()

            with_del = sent.with_del()
            assert len(with_del) == math.ceil(count / LIVE_FORGET_BATCH), len(with_del)
            assert sum(write.count(DEL) for write in with_del) == count
            assert not service._live_receipts
            receipts = await service.store.pending_receipts(receipt_id, 2 * count)
            sent_for = [r.message_id for r in receipts]
            assert sorted(sent_for) == sorted(set(ids) - taken)  # each once, none taken
            assert {r.status for r in receipts} == {410}
            assert not await other.keys(f"{bus.prefix}live:*")
    finally:
        await other.aclose()
        await delete_prefix(bus_url)
