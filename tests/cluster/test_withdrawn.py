"""A message deleted by its sender, or replaced by a newer push with its Topic, while a
connection holds a copy of it unsent (found by the fault campaign, docs/reliability.md).

A connection that says hello reads the user agent's stored messages first and holds the
live ones that arrive meanwhile, to keep them in order. With the store slow (a paused or
cut-off PostgreSQL) that read takes seconds; a DELETE answered 204 by another node, or a
newer push with the same Topic, must still keep the held copy from going out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cluster.conftest import in_process_nodes
from support.service import Registration, RunningService, TestAgent
from tidings.service.store import StoredMessage
from tidings.service.ws_session import WebSocketSession
from tidings.webpush import encrypt

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


async def push(
    client: httpx.AsyncClient,
    node: RunningService,
    registration: Registration,
    text: bytes,
    topic: str | None = None,
) -> httpx.Response:
    keys = registration.subscription_info()["keys"]
    headers = {"TTL": "60", "Content-Encoding": "aes128gcm"}
    if topic:
        headers["Topic"] = topic
    body = encrypt(text, keys["p256dh"], keys["auth"])
    path = urlsplit(registration.endpoint).path
    answer = await client.post(node.url + path, content=body, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer


async def reconnect_with_slow_store(
    node: RunningService,
) -> tuple[TestAgent, Registration, asyncio.Event]:
    """A user agent with a subscription, connected again to `node`, whose hello waits
    in the store read until the event is set."""
    assert node.service is not None
    first = await node.agent()
    registration = await first.register()
    await first.close()
    release = asyncio.Event()
    service = node.service
    real_pending = service.pending

    async def slow_pending(uaid: str) -> list[StoredMessage]:
        await release.wait()
        return await real_pending(uaid)

    service.pending = slow_pending  # type: ignore[method-assign]
    again = TestAgent(node.ws_url)
    again.registrations = first.registrations
    await again.connect(first.uaid)
    assert again.uaid is not None
    return again, registration, release


async def held_count(node: RunningService, uaid: str, count: int) -> None:
    assert node.service is not None
    deadline = time.monotonic() + 10
    while True:
        sessions = node.service.hub.agents(uaid)
        held = [len(s._held or ()) for s in sessions if isinstance(s, WebSocketSession)]
        if held and held[0] >= count:
            return
        assert time.monotonic() < deadline, f"the live messages were not held: {held}"
        await asyncio.sleep(0.02)


async def test_a_deleted_message_held_on_another_node_is_not_sent(tmp_path: Path) -> None:
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        agent, registration, release = await reconnect_with_slow_store(node_a)
        assert agent.uaid is not None
        async with httpx.AsyncClient() as client:
            answer = await push(client, node_b, registration, b"deleted")
            await held_count(node_a, agent.uaid, 1)
            location = urlsplit(answer.headers["location"]).path
            deleted = await client.delete(node_b.url + location)
            assert deleted.status_code == 204
            release.set()
            await push(client, node_b, registration, b"kept")
        notification = await agent.next_notification(timeout=10)
        assert notification.plaintext == b"kept"
        await agent.no_frame(0.5)
        await agent.close()


async def test_a_held_message_replaced_by_its_topic_is_not_sent(tmp_path: Path) -> None:
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        agent, registration, release = await reconnect_with_slow_store(node_a)
        assert agent.uaid is not None
        async with httpx.AsyncClient() as client:
            await push(client, node_b, registration, b"old", topic="weather")
            await push(client, node_b, registration, b"new", topic="weather")
            await held_count(node_a, agent.uaid, 2)
            release.set()
            await push(client, node_b, registration, b"after")
        received = [(await agent.next_notification(timeout=10)).plaintext for _ in range(2)]
        assert received == [b"new", b"after"]
        await agent.no_frame(0.5)
        await agent.close()
