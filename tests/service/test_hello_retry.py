"""A store read failing right after hello is retried, not skipped (found by the 500k
idle-connection benchmark: stored messages waited for the user agent's next hello)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from rfc8030.helpers import drain, path_of, subscribe
from rfc8030.helpers import push as rfc_push
from support.service import Registration, RunningService, TestAgent, running_service
from tidings.http2 import H2Client
from tidings.service import store_retry, ws_session
from tidings.service.store import StoredMessage, StoreUnavailable
from tidings.webpush import encrypt


class FlakyPending:
    """The service's `pending`, failing while `down` is set."""

    def __init__(self, running: RunningService) -> None:
        assert running.service is not None
        self.read = running.service.pending
        self.down = True
        self.attempts = 0
        running.service.pending = self  # type: ignore[method-assign]

    async def __call__(self, uaid: str) -> list[StoredMessage]:
        self.attempts += 1
        if self.down:
            raise StoreUnavailable("database is locked")
        return await self.read(uaid)

    async def attempted(self, count: int) -> None:
        async with asyncio.timeout(5):
            while self.attempts < count:
                await asyncio.sleep(0.01)


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningService]:
    monkeypatch.setattr(store_retry, "RETRY_FIRST_DELAY", 0.01)
    monkeypatch.setattr(store_retry, "RETRY_MAX_DELAY", 0.05)
    async with running_service(tmp_path) as running:
        yield running


async def push(registration: Registration, text: str) -> None:
    keys = registration.subscription_info()["keys"]
    body = encrypt(text.encode(), keys["p256dh"], keys["auth"])
    headers = {"ttl": "600", "content-encoding": "aes128gcm"}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(registration.endpoint, content=body, headers=headers)
    assert response.status_code == 201, response.text


async def test_stored_messages_come_after_a_transient_failure_without_a_new_hello(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_retry, "RETRIES", 1000)  # the outage lasts as long as needed
    first = await service.agent()
    registration = await first.register()
    await first.close()
    await push(registration, "stored 1")
    await push(registration, "stored 2")
    flaky = FlakyPending(service)
    agent = TestAgent(service.ws_url, registrations={registration.channel_id: registration})
    await agent.connect(first.uaid)
    await flaky.attempted(2)  # a failed read after hello, and a failed retry
    await push(registration, "live")  # held: the stored ones go first
    await flaky.attempted(flaky.attempts + 1)
    await agent.no_frame(0.1)
    flaky.down = False
    texts = [(await agent.next_notification()).plaintext for _ in range(3)]
    assert texts == [b"stored 1", b"stored 2", b"live"]
    await agent.no_frame()
    assert not agent.closed.is_set()
    await agent.close()


async def test_a_store_that_stays_down_closes_with_try_again_later(
    service: RunningService,
) -> None:
    first = await service.agent()
    await first.register()
    await first.close()
    flaky = FlakyPending(service)
    agent = TestAgent(service.ws_url)
    await agent.connect(first.uaid)
    await asyncio.wait_for(agent.closed.wait(), 5)
    assert agent.close_code == 1013
    assert flaky.attempts == 1 + store_retry.RETRIES


async def test_the_retries_end_with_the_connection(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_retry, "RETRIES", 1000)
    flaky = FlakyPending(service)
    agent = await service.agent()
    await flaky.attempted(3)
    await agent.close()
    await asyncio.sleep(0.2)
    attempts = flaky.attempts
    await asyncio.sleep(0.3)
    assert flaky.attempts == attempts


async def test_a_monitor_gets_its_stored_messages_after_a_transient_failure(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_retry, "RETRIES", 1000)
    client = await H2Client.connect(service.url)
    try:
        ua = await subscribe(client)
        assert (await rfc_push(client, ua, "stored"))[0] == 201
        flaky = FlakyPending(service)
        draining = asyncio.ensure_future(drain(client, ua.subscription))
        await flaky.attempted(2)  # the first read and a retry failed
        flaky.down = False
        pushed = await draining
        assert [ua.decrypt(message) for message in pushed] == ["stored"]
        assert flaky.attempts > 1
    finally:
        await client.close()


async def test_a_monitor_whose_store_stays_down_gets_503(service: RunningService) -> None:
    client = await H2Client.connect(service.url)
    try:
        ua = await subscribe(client)
        FlakyPending(service)
        stream = await client.open_stream("GET", path_of(ua.subscription), {"prefer": "wait=0"})
        response = await asyncio.wait_for(stream.response, 10)
        assert response.status == 503
        assert "retry-after" in response.headers
    finally:
        await client.close()


async def test_live_messages_held_during_a_long_outage_are_bounded(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_HELD the connection closes 1013; every held message is still stored."""
    monkeypatch.setattr(store_retry, "RETRIES", 1000)
    monkeypatch.setattr(ws_session, "MAX_HELD", 2)
    first = await service.agent()
    registration = await first.register()
    await first.close()
    flaky = FlakyPending(service)
    agent = TestAgent(service.ws_url, registrations={registration.channel_id: registration})
    await agent.connect(first.uaid)
    for text in ("live 1", "live 2"):
        await push(registration, text)
    await agent.no_frame(0.1)
    assert not agent.closed.is_set()
    await push(registration, "live 3")
    await asyncio.wait_for(agent.closed.wait(), 5)
    assert agent.close_code == 1013
    flaky.down = False
    again = TestAgent(service.ws_url, registrations=agent.registrations)
    await again.connect(first.uaid)
    texts = [(await again.next_notification()).plaintext for _ in range(3)]
    assert texts == [b"live 1", b"live 2", b"live 3"]
    await again.close()


async def test_a_redelivery_the_store_fails_is_tried_again_in_the_background(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cluster bus asks for a redelivery (a claim, a missed route); a failed read used
    # to leave the messages for the agent's next hello.
    monkeypatch.setattr(store_retry, "RETRIES", 1000)
    agent = await service.agent()
    registration = await agent.register()
    pushes = service.service
    assert pushes is not None
    pushes.hub.offer = lambda message: False  # type: ignore[method-assign]  # stored only
    try:
        await push(registration, "missed")
    finally:
        del pushes.hub.offer  # the class's method again
    flaky = FlakyPending(service)
    await asyncio.wait_for(pushes.redeliver(agent.uaid), 5)  # returns: the bus goes on
    await flaky.attempted(3)  # the failed read and two failed retries
    await agent.no_frame(0.1)
    flaky.down = False
    assert (await agent.next_notification()).plaintext == b"missed"
    assert not pushes._redeliveries and not pushes._redelivery_tasks
    await agent.close()
