"""The receipt of a `TTL: 0` message sent live, acknowledged on another node.

Never stored, such a message's receipt waits on the node that sent it; the node shares
it over the cluster bus (`<prefix>live:<message id>`), so that the user agent's DELETE
may reach any node (docs/rfc8030.md). It used to be 404 there, and a 410 receipt
followed when the sending node gave up on it, although it was acknowledged."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cluster.conftest import in_process_nodes
from rfc8030.test_receipt_unrecorded_delivery import receipt_queued
from tidings.service.service_base import RECEIPT_PATH
from tidings.webpush import encrypt
from tidings.webpush.links import REL_RECEIPT, link_target

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


async def test_a_live_ttl_0_message_acknowledged_on_another_node_gets_its_204(
    tmp_path: Path,
) -> None:
    async with in_process_nodes(tmp_path) as (node_a, node_b):
        assert node_a.service is not None and node_b.service is not None
        agent = await node_a.agent()
        registration = await agent.register()
        keys = registration.subscription_info()["keys"]
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                node_b.url + urlsplit(registration.endpoint).path,
                content=encrypt(b"now", keys["p256dh"], keys["auth"]),
                headers={"TTL": "0", "Content-Encoding": "aes128gcm", "Prefer": "respond-async"},
            )
            assert answer.status_code == 202, answer.text
            notification = await agent.next_notification(timeout=10, ack=False)
            assert notification.plaintext == b"now"  # sent live by node A
            location = urlsplit(answer.headers["location"]).path
            assert (await client.delete(node_b.url + location)).status_code == 204
            assert (await client.delete(node_b.url + location)).status_code == 404
            assert (await client.delete(node_a.url + location)).status_code == 404
        receipt_url = link_target(answer.headers["link"], REL_RECEIPT) or ""
        receipt_id = node_b.service.sealer.open_receipt(
            urlsplit(receipt_url).path[len(RECEIPT_PATH) :]
        )
        await receipt_queued(node_b, receipt_id)
        await node_a.service.give_up_live_receipts(math.inf)  # no 410 after the 204
        receipts = await node_b.service.store.pending_receipts(receipt_id, 10)
        assert [r.status for r in receipts] == [204], receipts
        await agent.close()
