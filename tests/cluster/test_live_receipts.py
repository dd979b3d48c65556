"""The receipt of a `TTL: 0` message sent live, acknowledged on another node.

Never stored, such a message's receipt waits on the node that sent it; the node shares
it over the cluster bus (`<prefix>live:<message id>`), so that the user agent's DELETE
may reach any node (docs/rfc8030.md). It used to be 404 there, and a 410 receipt
followed when the sending node gave up on it, although it was acknowledged."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cluster.conftest import in_process_nodes
from rfc8030.test_receipt_unrecorded_delivery import receipt_queued
from support.service import Registration, RunningService, TestAgent
from tidings.service.service_base import RECEIPT_PATH
from tidings.webpush import encrypt
from tidings.webpush.links import REL_RECEIPT, link_target

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


async def subscribed(node: RunningService) -> tuple[TestAgent, Registration]:
    agent = await node.agent()
    return agent, await agent.register()


async def push_with_receipt(
    client: httpx.AsyncClient,
    node: RunningService,
    registration: Registration,
    text: bytes,
    ttl: int,
) -> tuple[httpx.Response, str]:
    """A push through `node` asking for a receipt (202), and its receipt subscription."""
    keys = registration.subscription_info()["keys"]
    answer = await client.post(
        node.url + urlsplit(registration.endpoint).path,
        content=encrypt(text, keys["p256dh"], keys["auth"]),
        headers={"TTL": str(ttl), "Content-Encoding": "aes128gcm", "Prefer": "respond-async"},
    )
    assert answer.status_code == 202, answer.text
    assert node.service is not None
    receipt_url = link_target(answer.headers["link"], REL_RECEIPT) or ""
    token = urlsplit(receipt_url).path[len(RECEIPT_PATH) :]
    return answer, node.service.sealer.open_receipt(token)


async def test_a_live_ttl_0_message_acknowledged_on_another_node_gets_its_204(
    tmp_path: Path,
) -> None:
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        assert node_a.service is not None and node_b.service is not None
        agent, registration = await subscribed(node_a)
        async with httpx.AsyncClient() as client:
            answer, receipt_id = await push_with_receipt(client, node_b, registration, b"now", 0)
            notification = await agent.next_notification(timeout=10, ack=False)
            assert notification.plaintext == b"now"  # sent live by node A
            location = urlsplit(answer.headers["location"]).path
            assert (await client.delete(node_b.url + location)).status_code == 204
            assert (await client.delete(node_b.url + location)).status_code == 404
            assert (await client.delete(node_a.url + location)).status_code == 404
        await receipt_queued(node_b, receipt_id)
        await node_a.service.give_up_live_receipts(math.inf)  # no 410 after the 204
        receipts = await node_b.service.store.pending_receipts(receipt_id, 10)
        assert [r.status for r in receipts] == [204], receipts
        await agent.close()


class Listener:
    """A receipt monitor's side of the hub: counts its wakes."""

    def __init__(self) -> None:
        self.woken = asyncio.Event()

    def receipts_ready(self) -> None:
        self.woken.set()

    def close(self) -> None:
        return None


async def test_a_receipt_queued_on_one_node_wakes_its_monitor_on_another(tmp_path: Path) -> None:
    """A receipt monitor on node A used to learn of a receipt queued on node B only by
    its poll, every monitors / 50 s with many open (docs/reliability.md): the bus now
    wakes it."""
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        assert node_a.service is not None and node_b.service is not None
        agent, registration = await subscribed(node_b)
        async with httpx.AsyncClient() as client:
            _, receipt_id = await push_with_receipt(client, node_b, registration, b"later", 60)
        listener = Listener()
        node_a.service.hub.listen_receipts(receipt_id, listener)
        await agent.next_notification(timeout=10)  # acknowledged on node B
        await asyncio.wait_for(listener.woken.wait(), 10)
        assert await node_a.service.store.pending_receipts(receipt_id, 10)
        node_a.service.hub.unlisten_receipts(receipt_id, listener)
        await agent.close()
