"""Megaphone broadcasts across a cluster: a change made on one node reaches a browser
connected to another at once, through the Redis bus (PostgreSQL keeps the table)."""

from __future__ import annotations

import time

from support.service import TestAgent, put_broadcast

from .conftest import Cluster, close_quietly

TOKEN = "cluster-admin"


async def put(node_url: str, broadcast_id: str, version: str) -> None:
    answer = await put_broadcast(node_url, broadcast_id, version, TOKEN)
    assert answer.status_code == 200, answer.text


async def test_a_change_on_node_a_reaches_a_browser_on_node_b(cluster: Cluster) -> None:
    # The store is re-read only hourly: what arrives within seconds came over the bus.
    config = cluster.root / "tidings.toml"
    config.write_text(f'broadcast_poll = 3600.0\ndashboard_token = "{TOKEN}"\n')
    a, b = await cluster.start("a", "b", extra=("--config", str(config)))
    await put(a.url, "kinto:1", "v1")
    agent = TestAgent(b.ws_url)
    try:
        deadline = time.monotonic() + 30
        while True:  # b hears of it on the bus, a moment after a answered the PUT
            await agent.connect(hello=False)
            await agent.send({"messageType": "hello", "broadcasts": {"kinto:1": "v0"}})
            hello = await agent.expect("hello")
            if "kinto:1" in hello["broadcasts"]:
                break
            assert time.monotonic() < deadline, hello
            await agent.close()
            agent = TestAgent(b.ws_url)
        assert hello["broadcasts"] == {"kinto:1": "v1"}
        await put(a.url, "kinto:1", "v2")
        changed = await agent.expect("broadcast", timeout=20)
        assert changed["broadcasts"] == {"kinto:1": "v2"}
    finally:
        await close_quietly(agent)
