"""Nodes sharing PostgreSQL and Redis deliver to user agents connected to any of them."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cluster.conftest import Cluster, at, close_quietly, connect, drain, push

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(60)]


async def test_a_push_to_node_b_reaches_the_agent_on_node_a_live(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    agent = await connect(a)
    try:
        registration = await agent.register()
        assert registration.endpoint.startswith("http://push.tidings.test/push/")
        for i in range(3):
            response = await push(b, registration, f"live {i}")
            assert response.status_code == 201, response.text
            notification = await agent.next_notification(timeout=3)
            assert notification.plaintext == f"live {i}".encode()
        # TTL 0 crosses nodes too (delivered live, never stored).
        assert (await push(b, registration, "now or never", ttl=0)).status_code == 201
        assert (await agent.next_notification(timeout=3)).plaintext == b"now or never"
    finally:
        await close_quietly(agent)


async def test_three_nodes_any_to_any(cluster: Cluster) -> None:
    nodes = await cluster.start("a", "b", "c")
    agents = [await connect(node) for node in nodes]
    try:
        registrations = [await agent.register() for agent in agents]
        for i, (agent, registration) in enumerate(zip(agents, registrations, strict=True)):
            for j, sender in enumerate(nodes):
                text = f"to {i} via {j}"
                assert (await push(sender, registration, text)).status_code == 201
                assert (await agent.next_notification(timeout=3)).plaintext == text.encode()
        for agent in agents:
            await agent.no_frame(0.3)
    finally:
        await close_quietly(*agents)


async def test_an_offline_agent_gets_stored_messages_from_another_node(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    agent = await connect(a)
    registration = await agent.register()
    await agent.close()
    assert (await push(a, registration, "stored via a")).status_code == 201
    assert (await push(b, registration, "dropped", ttl=0)).status_code == 201
    assert (await push(b, registration, "stored via b")).status_code == 201
    again = await connect(b, agent)
    try:
        # At least once: a message may come twice (redelivered around the reconnect);
        # the user agent drops duplicates by message id.
        texts = list(dict(await drain(again)).values())
        assert texts == [b"stored via a", b"stored via b"], texts  # TTL 0 was never stored
    finally:
        await close_quietly(again)


async def test_the_newest_connection_wins_across_nodes(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    old = await connect(a)
    registration = await old.register()
    # The agent reconnects to b while a still holds its old connection open.
    new = await connect(b, old)
    try:
        await asyncio.sleep(0.3)  # the claim travels to Redis
        assert (await push(c, registration, "to the newest")).status_code == 201
        assert (await new.next_notification(timeout=3)).plaintext == b"to the newest"
        await old.no_frame(0.3)
        # When a finally sees the old connection go, it must not erase b's claim.
        await old.close()
        await asyncio.sleep(0.3)
        assert (await push(c, registration, "still live")).status_code == 201
        assert (await new.next_notification(timeout=3)).plaintext == b"still live"
    finally:
        await close_quietly(old, new)


async def test_topic_limit_and_cancel_hold_across_nodes(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b", extra=("--max-messages", "5"))
    agent = await connect(a)
    registration = await agent.register()
    await agent.close()
    async with httpx.AsyncClient(timeout=10) as client:
        # Ten pushes with one topic, raced through both nodes: exactly one survives.
        responses = await asyncio.gather(
            *(
                push((a, b)[i % 2], registration, f"topic {i}", client=client, topic="score")
                for i in range(10)
            )
        )
        assert [r.status_code for r in responses] == [201] * 10
        # Cancelled through the other node than the one that accepted it.
        cancelled = await push(a, registration, "cancel me", client=client)
        assert (await client.delete(at(b, cancelled.headers["location"]))).status_code == 204
        assert (await client.delete(at(a, cancelled.headers["location"]))).status_code == 404
        # The limit (5 per user agent, 1 used by the topic) counts across nodes.
        responses = await asyncio.gather(
            *(push((a, b)[i % 2], registration, f"fill {i}", client=client) for i in range(8))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 4 + [429] * 4, codes
    again = await connect(b, agent)
    try:
        texts = list(dict(await drain(again)).values())
        topics = [t for t in texts if t and t.startswith(b"topic")]
        assert len(topics) == 1
        assert len(texts) == 5 and b"cancel me" not in texts
    finally:
        await close_quietly(again)
