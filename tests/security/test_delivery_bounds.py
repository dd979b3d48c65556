"""The per-connection withdrawals and the node's unrecorded deliveries, filled to their
bounds (each patched small in its module) as a flood of DELETEs or a long store fault
would: nothing grows past the bound, no message is sent after its DELETE's 204, no
acknowledged message loses its receipt, and the client gets close 1013 (try again)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from rfc8030.test_receipt_unrecorded_delivery import push_with_receipt
from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service import acknowledgements, hub
from tidings.service.core import PushService
from tidings.service.monitor import PushMonitor
from tidings.service.store import StoredMessage, StoreUnavailable
from tidings.service.ws_protocol import CLOSE_TRY_AGAIN_LATER
from tidings.service.ws_session import WebSocketSession
from tidings.webpush import Urgency, encrypt

BOUND = 4


async def push(
    client: httpx.AsyncClient, running: RunningService, registration: Registration, text: bytes
) -> str:
    """Push a stored message; its message resource path."""
    keys = registration.subscription_info()["keys"]
    answer = await client.post(
        running.url + urlsplit(registration.endpoint).path,
        content=encrypt(text, keys["p256dh"], keys["auth"]),
        headers={"TTL": "600", "Content-Encoding": "aes128gcm"},
    )
    assert answer.status_code == 201, answer.text
    return urlsplit(answer.headers["location"]).path


def answer_late(service: PushService, release: asyncio.Event) -> None:
    """The stored-message read after hello takes its snapshot, then its answer is late
    (a slow PostgreSQL): a DELETE answered meanwhile must still stop the copy."""
    real_pending = service.pending

    async def late_pending(uaid: str) -> list[StoredMessage]:
        stored = await real_pending(uaid)
        await release.wait()
        return stored

    service.pending = late_pending  # type: ignore[method-assign]


def session_of(running: RunningService, uaid: str) -> WebSocketSession:
    assert running.service is not None
    (session,) = running.service.hub.agents(uaid)
    assert isinstance(session, WebSocketSession)
    return session


async def test_deletes_past_the_withdrawal_bound_while_the_stored_list_is_held_close_1013(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "RECENT_WITHDRAWALS", BOUND)
    async with running_service(tmp_path) as running, httpx.AsyncClient() as client:
        assert running.service is not None
        first = await running.agent()
        registration = await first.register()
        await first.close()
        deleted = await push(client, running, registration, b"deleted first")
        await push(client, running, registration, b"kept")
        churn = [await push(client, running, registration, b"churn") for _ in range(BOUND)]
        release = asyncio.Event()
        answer_late(running.service, release)
        agent = TestAgent(running.ws_url, registrations=first.registrations)
        await agent.connect(first.uaid)
        assert agent.uaid is not None
        session = session_of(running, agent.uaid)
        for path in [deleted, *churn]:  # more DELETEs than the connection remembers
            assert (await client.delete(running.url + path)).status_code == 204
            assert len(session._withdrawn) <= BOUND
        release.set()
        async with asyncio.timeout(5):
            await agent.closed.wait()
        assert agent.close_code == CLOSE_TRY_AGAIN_LATER
        texts = []
        while not agent._frames.empty():
            frame = agent._frames.get_nowait()
            texts.append(frame.get("messageType"))
        assert "notification" not in texts  # the deleted one above all
        del running.service.pending  # the instance's slow read: the class's again
        again = TestAgent(running.ws_url, registrations=first.registrations)
        await again.connect(first.uaid)
        assert (await again.next_notification()).plaintext == b"kept"
        await again.no_frame()
        await again.close()


async def test_deletes_past_the_withdrawal_bound_after_the_stored_list_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing held: the oldest withdrawals are forgotten, the connection stays."""
    monkeypatch.setattr(hub, "RECENT_WITHDRAWALS", BOUND)
    async with running_service(tmp_path) as running, httpx.AsyncClient() as client:
        agent = await running.agent()
        registration = await agent.register()
        assert agent.uaid is not None
        session = session_of(running, agent.uaid)
        for index in range(3 * BOUND):
            path = await push(client, running, registration, b"%d" % index)
            await agent.next_notification(ack=False)
            assert (await client.delete(running.url + path)).status_code == 204
            assert len(session._withdrawn) <= BOUND
        await push(client, running, registration, b"still served")
        assert (await agent.next_notification()).plaintext == b"still served"
        assert not agent.closed.is_set()
        await agent.close()


async def test_topics_past_the_withdrawal_bound_are_forgotten_only_after_the_stored_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "RECENT_WITHDRAWALS", BOUND)
    withdrawals = hub.Withdrawals()
    withdrawals.holding = True
    messages = [stored_with_topic(f"t{index}", float(index)) for index in range(3 * BOUND)]
    for message in messages:
        withdrawals.note(message)
    older = stored_with_topic("t0", -1.0)
    assert older in withdrawals  # no Topic forgotten while the stored list is held
    withdrawals.holding = False
    withdrawals.note(stored_with_topic("later", 99.0))
    assert len(withdrawals) <= BOUND


def stored_with_topic(topic: str, created_at: float) -> StoredMessage:
    return StoredMessage(
        message_id=f"{topic}-{created_at}",
        uaid="a" * 32,
        channel_id="c",
        body=b"",
        ttl=60,
        created_at=created_at,
        expires_at=time.time() + 60,
        topic=topic,
    )


async def test_unrecorded_deliveries_past_their_bound_are_not_sent_and_lose_no_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store cannot record deliveries (the rest works): the node remembers BOUND of
    them; the next message wanting a receipt is not sent (close 1013), and once the
    store is back every acknowledged message gets its receipt."""
    monkeypatch.setattr(acknowledgements, "MAX_PENDING_DELIVERIES", BOUND)
    async with running_service(tmp_path) as running, httpx.AsyncClient() as client:
        service = running.service
        assert service is not None
        first = await running.agent()
        registration = await first.register()
        await first.close()
        receipts = [
            (await push_with_receipt(client, running, registration))[1] for _ in range(BOUND + 2)
        ]
        real_mark = service.store.mark_delivered

        async def unavailable(uaid: str, message_id: str) -> None:
            raise StoreUnavailable("PostgreSQL: connection lost")

        service.store.mark_delivered = unavailable  # type: ignore[method-assign]
        agent = TestAgent(running.ws_url, registrations=first.registrations)
        await agent.connect(first.uaid)
        for _ in range(BOUND):
            notification = await agent.next_notification(ack=False)
            with contextlib.suppress(websockets.ConnectionClosed):  # if still open
                await agent.ack(notification.frame)  # fails in the store: stays stored
        async with asyncio.timeout(5):
            await agent.closed.wait()
        assert agent.close_code == CLOSE_TRY_AGAIN_LATER
        assert agent._frames.empty()  # the one past the bound was not sent
        assert len(service._unmarked) <= BOUND
        service.store.mark_delivered = real_mark  # type: ignore[method-assign]
        again = TestAgent(running.ws_url, registrations=first.registrations)
        await again.connect(first.uaid)
        for _ in range(BOUND + 2):
            await again.next_notification()
        deadline = time.monotonic() + 10
        for receipt_id in receipts:
            while not await service.store.pending_receipts(receipt_id, 10):
                assert time.monotonic() < deadline, "an acknowledged message has no receipt"
                await asyncio.sleep(0.05)
        assert not service._unmarked
        await again.close()


def test_deletes_past_the_withdrawal_bound_end_a_monitor_still_sending_its_stored_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The RFC 8030 side: the monitor ends (the client monitors again) instead of
    forgetting a withdrawal while its stored list may still hold the message."""
    monkeypatch.setattr(hub, "RECENT_WITHDRAWALS", BOUND)
    channel: Any = SimpleNamespace(closed=asyncio.Event())
    watcher = PushMonitor(SimpleNamespace(), channel, "u" * 32, None, Urgency.VERY_LOW)  # type: ignore[arg-type]
    for index in range(BOUND + 1):
        watcher.withdraw(f"deleted {index}")
        assert len(watcher._withdrawn) <= BOUND
    assert channel.closed.is_set()
