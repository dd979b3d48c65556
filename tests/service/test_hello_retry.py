"""A store read failing right after hello is retried, not skipped (found by the 500k
idle-connection benchmark: stored messages waited for the user agent's next hello)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service import store_retry
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
