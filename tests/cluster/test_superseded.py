"""A user agent that reconnects to another node while its old connection is not yet
seen dead (found by the fault campaign, docs/reliability.md): the old node lets go of
it at once, so a push accepted there reaches the new connection instead of being
written into the stale one to wait for the next hello."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cluster.conftest import in_process_nodes
from support.service import TestAgent
from tidings.webpush import encrypt

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


async def test_a_push_to_the_old_node_reaches_the_newer_connection(tmp_path: Path) -> None:
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        assert node_a.service is not None and node_b.service is not None
        stale = await node_a.agent()
        registration = await stale.register()
        uaid = stale.uaid
        assert uaid is not None
        # The same user agent says hello on node b; its connection to a stays open,
        # as a connection does whose other end died during a partition.
        fresh = TestAgent(node_b.ws_url)
        await fresh.connect(uaid)
        fresh.registrations = stale.registrations
        deadline = time.monotonic() + 10
        while node_a.service.hub.is_connected(uaid):
            assert time.monotonic() < deadline, "node a kept the stale connection"
            await asyncio.sleep(0.02)
        keys = registration.subscription_info()["keys"]
        body = encrypt(b"to the newer connection", keys["p256dh"], keys["auth"])
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                node_a.url + urlsplit(registration.endpoint).path,
                content=body,
                headers={"TTL": "60", "Content-Encoding": "aes128gcm"},
            )
        assert answer.status_code == 201
        notification = await fresh.next_notification(timeout=10)
        assert notification.plaintext == b"to the newer connection"
        await fresh.close()
        await stale.close()


async def test_an_older_hello_never_takes_over_a_newer_one(tmp_path: Path) -> None:
    """The notice carries the newer hello's stamp: a node whose connection is newer
    keeps it (the bus may deliver notices late)."""
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        assert node_b.service is not None
        first = await node_a.agent()
        await first.register()  # a user agent with a subscription: known to every node
        uaid = first.uaid
        assert uaid is not None
        second = TestAgent(node_b.ws_url)
        await second.connect(uaid)
        bus = node_b.service.cluster
        await bus._let_go(uaid, 1)  # type: ignore[attr-defined]  # a notice from long ago
        assert node_b.service.hub.is_connected(uaid)
        await second.close()
        await first.close()
