"""The campaign's RFC 8030 user agent stamps a delivery when the push arrives, not when
its predecessor's acknowledgement is answered (the checker judges "after delete" by it)."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

import httpx
import pytest

from support.service import RunningService

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "faults"))

from workload import History, Rfc8030Agent

from tidings.webpush import encrypt


async def test_a_held_acknowledgement_does_not_delay_the_next_delivery(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node cut off from Redis held its DELETEs (the rate limit waited on Redis) while it
    # had already written the next push; the agent, awaiting the DELETE, stamped that push
    # 1.4 s late, after its sender's DELETE: a false "after delete" in the short campaign.
    assert service.service is not None
    released = asyncio.Event()
    deletes = 0
    delete = service.service.delete_message_resource

    async def held_delete(token: str) -> bool:
        nonlocal deletes
        deletes += 1
        await released.wait()
        return await delete(token)

    monkeypatch.setattr(service.service, "delete_message_resource", held_delete)
    history = History()
    agent = Rfc8030Agent("h2ua0", [service.url], history, random.Random(1))
    await agent.setup(1)
    channel = next(iter(agent.channels.values()))
    running = asyncio.create_task(agent.run())
    try:
        async with httpx.AsyncClient(base_url=service.url) as client:
            for message_id in ("m1", "m2"):
                body = json.dumps({"id": message_id}).encode()
                answer = await client.post(
                    channel.endpoint_path,
                    content=encrypt(body, channel.p256dh, channel.auth),
                    headers={"TTL": "60", "Content-Encoding": "aes128gcm"},
                )
                assert answer.status_code == 201, answer.text
        async with asyncio.timeout(20):
            while len([e for e in history.events if e["kind"] == "delivered"]) < 2:
                await asyncio.sleep(0.02)
        assert deletes >= 1 and not [e for e in history.events if e["kind"] == "acked"]
        released.set()
        async with asyncio.timeout(20):
            while len([e for e in history.events if e["kind"] == "acked"]) < 2:
                await asyncio.sleep(0.02)
        delivered = [e["id"] for e in history.events if e["kind"] == "delivered"]
        assert delivered == ["m1", "m2"]
    finally:
        agent.stopping = True
        released.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
