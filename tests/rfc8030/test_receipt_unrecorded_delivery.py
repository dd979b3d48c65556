"""A receipt for a message whose delivery could not be recorded when it was sent (found
by the fault campaign, docs/reliability.md): the store was unreachable for that write,
then back for the acknowledgement. A receipt is queued only for a message recorded as
delivered, so the acknowledgement records the delivery first."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from support.service import Registration, RunningService, running_service
from tidings.service.core import RECEIPT_PATH
from tidings.service.store import StoreUnavailable
from tidings.webpush import encrypt
from tidings.webpush.links import REL_RECEIPT, link_target


async def test_an_acknowledged_message_gets_its_receipt_after_a_failed_delivery_write(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path) as running:
        service = running.service
        assert service is not None
        real_mark = service.store.mark_delivered
        failures = []

        async def unavailable_once(uaid: str, message_id: str) -> None:
            if not failures:
                failures.append(message_id)
                raise StoreUnavailable("PostgreSQL: connection lost")
            await real_mark(uaid, message_id)

        service.store.mark_delivered = unavailable_once  # type: ignore[method-assign]
        agent = await running.agent()
        registration = await agent.register()
        async with httpx.AsyncClient() as client:
            _, receipt_id = await push_with_receipt(client, running, registration)
        notification = await agent.next_notification()  # and acknowledged
        assert notification.plaintext == b"with a receipt" and failures
        await receipt_queued(running, receipt_id)
        await agent.close()


async def push_with_receipt(
    client: httpx.AsyncClient, running: RunningService, registration: Registration
) -> tuple[httpx.Response, str]:
    """Push asking for a receipt: the answer and its receipt subscription's id."""
    assert running.service is not None
    keys = registration.subscription_info()["keys"]
    answer = await client.post(
        running.url + urlsplit(registration.endpoint).path,
        content=encrypt(b"with a receipt", keys["p256dh"], keys["auth"]),
        headers={"TTL": "60", "Content-Encoding": "aes128gcm", "Prefer": "respond-async"},
    )
    assert answer.status_code == 202
    receipt_url = link_target(answer.headers["link"], REL_RECEIPT) or ""
    token = urlsplit(receipt_url).path[len(RECEIPT_PATH) :]
    return answer, running.service.sealer.open_receipt(token)


async def receipt_queued(running: RunningService, receipt_id: str) -> None:
    assert running.service is not None
    deadline = time.monotonic() + 10
    while not await running.service.store.pending_receipts(receipt_id, 10):
        assert time.monotonic() < deadline, "the acknowledged message has no receipt"
        await asyncio.sleep(0.05)


async def test_a_delete_of_a_message_whose_delivery_was_not_recorded_queues_its_receipt(
    tmp_path: Path,
) -> None:
    """The RFC 8030 way: a monitor sent it (recording the delivery failed), the user
    agent acknowledges with a DELETE of the message resource."""
    async with running_service(tmp_path) as running:
        service = running.service
        assert service is not None
        agent = await running.agent()
        registration = await agent.register()
        await agent.close()  # stored, to be handed over by hand below
        async with httpx.AsyncClient() as client:
            answer, receipt_id = await push_with_receipt(client, running, registration)
            assert agent.uaid is not None
            (message,) = await service.pending(agent.uaid)
            real_mark = service.store.mark_delivered

            async def unavailable(uaid: str, message_id: str) -> None:
                raise StoreUnavailable("PostgreSQL: connection lost")

            service.store.mark_delivered = unavailable  # type: ignore[method-assign]
            await service.mark_delivered(message)  # as a monitor does once it is sent
            service.store.mark_delivered = real_mark  # type: ignore[method-assign]
            location = urlsplit(answer.headers["location"]).path
            deleted = await client.delete(running.url + location)
            assert deleted.status_code == 204
        await receipt_queued(running, receipt_id)


async def test_a_delete_overtaking_the_delivery_write_still_queues_the_receipt(
    tmp_path: Path,
) -> None:
    """The store is slow: the user agent's DELETE arrives while the delivery is still
    being recorded."""
    async with running_service(tmp_path) as running:
        service = running.service
        assert service is not None
        agent = await running.agent()
        registration = await agent.register()
        await agent.close()
        async with httpx.AsyncClient() as client:
            answer, receipt_id = await push_with_receipt(client, running, registration)
            assert agent.uaid is not None
            (message,) = await service.pending(agent.uaid)
            real_mark = service.store.mark_delivered
            slow = asyncio.Event()

            async def slow_mark(uaid: str, message_id: str) -> None:
                await slow.wait()
                await real_mark(uaid, message_id)

            service.store.mark_delivered = slow_mark  # type: ignore[method-assign]
            marking = asyncio.ensure_future(service.mark_delivered(message))
            await asyncio.sleep(0)  # the write is under way
            service.store.mark_delivered = real_mark  # type: ignore[method-assign]
            location = urlsplit(answer.headers["location"]).path
            deleted = await client.delete(running.url + location)
            assert deleted.status_code == 204
            slow.set()
            await marking
        await receipt_queued(running, receipt_id)
