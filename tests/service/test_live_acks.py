"""Pushes written to a quickly acknowledging WebSocket before they are stored
(live_acks.py): acknowledged in time they are never stored; otherwise stored and
answered once committed, so that nothing answered 201 is ever lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service.live_acks import LiveAcks
from tidings.service.store import StoredMessage
from tidings.service.ws_session import WebSocketSession
from tidings.webpush import VapidKey, sign_vapid


class Calls:
    """Counts a store method's calls, optionally holding each until released."""

    def __init__(self, service: RunningService, name: str) -> None:
        assert service.service is not None
        self.store = service.service.store
        self.name = name
        self.original = getattr(self.store, name)
        self.count = 0
        self.entered = asyncio.Event()
        self.release: asyncio.Event | None = None
        setattr(self.store, name, self)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        return await self.original(*args, **kwargs)


@pytest.fixture
async def quick(tmp_path: Path) -> AsyncIterator[RunningService]:
    """A service waiting up to 5 s for a quick ack (so that a loaded machine's quick
    acks are all in time; the short-wait cases use their own)."""
    async with running_service(tmp_path, live_ack_wait=5.0) as running:
        yield running


def session_of(service: RunningService, uaid: str) -> WebSocketSession:
    assert service.service is not None
    (session,) = service.service.hub.agents(uaid)
    assert isinstance(session, WebSocketSession)
    return session


async def auto_ack(agent: TestAgent, seen: list[str]) -> None:
    """Acknowledge every notification as it arrives (as Firefox does)."""
    while True:
        frame = await agent.expect("notification", timeout=60)
        seen.append(frame["version"])
        await agent.ack(frame)


async def post(endpoint: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(endpoint, headers={"ttl": "60", **headers})


async def nothing_left(service: RunningService, uaid: str) -> None:
    """The user agent's next connection is given nothing (nothing is left stored)."""
    again = await service.agent(uaid)
    await again.no_frame()
    await again.close()


async def settled(service: RunningService) -> int:
    """The store's message count once the acknowledgements' deletes are written."""
    assert service.service is not None
    for _ in range(200):
        if not service.service._acks and service.service._ack_writer is None:
            break
        await asyncio.sleep(0.02)
    return await service.service.store.count_messages()


async def test_pushes_acknowledged_in_time_are_never_stored(quick: RunningService) -> None:
    assert quick.service is not None
    agent = await quick.agent()
    registration = await agent.register()
    stores, deletes = Calls(quick, "store_message"), Calls(quick, "delete_messages")
    seen: list[str] = []
    acker = asyncio.ensure_future(auto_ack(agent, seen))
    try:
        locations = []
        for n in range(6):
            response = await post(registration.endpoint)
            assert response.status_code == 201, n
            locations.append(response.headers["location"].rsplit("/", 1)[1])
        # The first push was stored (no ack measured yet); its quick ack let the
        # other five be written first and answered by their acks.
        assert stores.count == 1
        assert quick.service.metrics.acknowledged_unstored_total == 5
        assert await settled(quick) == 0
        assert deletes.count == 1  # the stored one's; the others had nothing to delete
        assert len(seen) == 6 and len(set(seen)) == 6
    finally:
        acker.cancel()
        await agent.close()
    await nothing_left(quick, agent.uaid)


async def test_a_push_not_acknowledged_in_time_is_stored_and_comes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_service(tmp_path, live_ack_wait=0.2) as service:
        assert service.service is not None
        agent = await service.agent()
        registration = await agent.register()
        assert (await post(registration.endpoint)).status_code == 201
        await agent.next_notification()  # acknowledged at once: a quick connection
        session = session_of(service, agent.uaid)
        for _ in range(100):  # the ack is read by the service
            if session.quick_ack_wait():
                break
            await asyncio.sleep(0.02)
        assert 0 < session.quick_ack_wait() <= 0.2
        # Written first, not acknowledged in time (at most 0.2 s): stored, then answered.
        assert (await post(registration.endpoint)).status_code == 201
        assert session.quick_ack_wait() == 0  # the next ones are stored first again
        expects = 0
        original = LiveAcks.expect

        def counted(acks: LiveAcks, uaid: str, message_id: str) -> None:
            nonlocal expects
            expects += 1
            original(acks, uaid, message_id)

        monkeypatch.setattr(LiveAcks, "expect", counted)  # slots: on the class
        assert (await post(registration.endpoint)).status_code == 201
        assert expects == 0  # stored at once, without waiting
        assert await settled(service) == 2
        first = await agent.expect("notification")
        second = await agent.expect("notification")
        await agent.close()
        # Both come again on the next connection: nothing answered 201 was lost.
        again = await service.agent(agent.uaid)
        redelivered = [await again.expect("notification") for _ in range(2)]
        assert [f["version"] for f in redelivered] == [first["version"], second["version"]]
        await again.close()


async def test_an_ack_arriving_while_the_push_is_stored_deletes_it(tmp_path: Path) -> None:
    """The ack comes after the wait, while the insert is under way: the delete is
    queued once the insert is committed, so the message does not come again."""
    async with running_service(tmp_path, live_ack_wait=0.2) as service:
        assert service.service is not None
        agent = await service.agent()
        registration = await agent.register()
        assert (await post(registration.endpoint)).status_code == 201
        await agent.next_notification()
        session = session_of(service, agent.uaid)
        for _ in range(100):
            if session.quick_ack_wait():
                break
            await asyncio.sleep(0.02)
        stores = Calls(service, "store_message")
        stores.release = asyncio.Event()
        pushing = asyncio.ensure_future(post(registration.endpoint))
        frame = await agent.expect("notification")  # written before it is stored
        await asyncio.wait_for(stores.entered.wait(), 10)  # the wait is over: storing
        await agent.ack(frame)
        await agent.send({"messageType": "ping"})
        await agent.receive()  # the ping's answer: the ack before it was read
        stores.release.set()
        assert (await pushing).status_code == 201
        assert await settled(service) == 0
        await agent.close()
        again = await service.agent(agent.uaid)
        await again.no_frame()
        await again.close()


async def test_a_push_to_a_removed_subscription_is_not_written(quick: RunningService) -> None:
    agent = await quick.agent()
    kept, removed = await agent.register(), await agent.register()
    seen: list[str] = []
    acker = asyncio.ensure_future(auto_ack(agent, seen))
    try:
        assert (await post(kept.endpoint)).status_code == 201  # makes the ack quick
        assert (await post(kept.endpoint)).status_code == 201
        assert quick.service is not None
        assert quick.service.metrics.acknowledged_unstored_total == 1
        acker.cancel()
        await agent.unregister(removed)
        acker = asyncio.ensure_future(auto_ack(agent, seen))
        response = await post(removed.endpoint)
        assert response.status_code == 410
        await asyncio.sleep(0.2)
        assert len(seen) == 2  # nothing was written for it
    finally:
        acker.cancel()
        await agent.close()


async def test_a_signed_push_acknowledged_unstored_reads_acknowledged(
    quick: RunningService,
) -> None:
    await signed_push_reads_acknowledged(quick)


async def acking_agent(
    service: RunningService, application_server_key: str | None = None
) -> tuple[TestAgent, Registration, list[str], asyncio.Future[None]]:
    """A user agent with one subscription that acknowledges every push from now on
    (their ids in the list, by the task)."""
    agent = await service.agent()
    registration = await agent.register(application_server_key)
    seen: list[str] = []
    return agent, registration, seen, asyncio.ensure_future(auto_ack(agent, seen))


async def signed_push_reads_acknowledged(
    quick: RunningService, between: Callable[[str], Awaitable[None]] | None = None
) -> None:
    """A signed push's second push is acknowledged unstored (after `between(uaid)`, if
    given), and its status reads "acknowledged" at once."""
    key = VapidKey.generate()
    agent, registration, _, acker = await acking_agent(quick, key.public_key_b64)
    try:
        signed = {"authorization": sign_vapid(key, quick.url, "mailto:a@example.com").authorization}
        assert (await post(registration.endpoint, **signed)).status_code == 201
        if between is not None:
            await between(agent.uaid)
        response = await post(registration.endpoint, **signed)
        assert response.status_code == 201
        assert quick.service is not None
        assert quick.service.metrics.acknowledged_unstored_total == 1
        async with httpx.AsyncClient() as client:
            status = await client.get(response.headers["location"], headers=signed)
        assert status.status_code == 200
        document = json.loads(status.content)
        assert document["state"] == "acknowledged"
        assert document["delivered_via"] == "websocket"
        assert document["acknowledged_at"] >= document["delivered_at"] >= document["created_at"]
    finally:
        acker.cancel()
        await agent.close()


async def test_a_wait_of_zero_stores_every_push(tmp_path: Path) -> None:
    async with running_service(tmp_path, live_ack_wait=0) as service:
        agent = await service.agent()
        registration = await agent.register()
        stores = Calls(service, "store_message")
        seen: list[str] = []
        acker = asyncio.ensure_future(auto_ack(agent, seen))
        try:
            for _ in range(3):
                assert (await post(registration.endpoint)).status_code == 201
            assert stores.count == 3
        finally:
            acker.cancel()
            await agent.close()


def test_the_quick_agent_is_the_only_connection_of_its_user_agent() -> None:
    """Several RFC 8030 monitors (or none) never take the fast path."""
    from tidings.service.hub import Hub

    class Quick:
        exclusive = True
        uaid: str | None = "u"

        def accepts(self, message: StoredMessage) -> bool:
            return True

        def offer(self, message: StoredMessage) -> None:
            return None

        def withdraw(self, message_id: str) -> None:
            return None

        def quick_ack_wait(self) -> float:
            return 0.01

        def ack_overdue(self) -> None:
            return None

        async def close(self, code: int, reason: str) -> None:
            return None

    hub = Hub()
    assert hub.quick_agent("u") is None
    one, two = Quick(), Quick()
    hub.attach("u", one)
    assert hub.quick_agent("u") is one
    hub.attach("u", two)
    assert hub.quick_agent("u") is None


async def a_full_subscription(
    service: RunningService,
) -> tuple[TestAgent, Registration, Registration, list[str], asyncio.Future[None]]:
    """A user agent with a subscription at its quota of 1 (`full`), another one, every
    push acknowledged from now on (`seen`, by `acker`), and a first push to the other
    one acknowledged (a quick connection, once its ack is read)."""
    agent = await service.agent()
    full, other = await agent.register(), await agent.register()
    assert (await post(full.endpoint)).status_code == 201
    await agent.next_notification(ack=False)  # stays stored: the quota is reached
    seen: list[str] = []
    acker = asyncio.ensure_future(auto_ack(agent, seen))
    assert (await post(other.endpoint)).status_code == 201
    return agent, full, other, seen, acker


async def test_a_quick_connection_does_not_pass_a_quota(tmp_path: Path) -> None:
    """Refusals come before the write: a subscription at its quota is refused 429 and
    nothing is written, as when every push is stored first."""
    async with running_service(
        tmp_path, live_ack_wait=5.0, max_messages_per_subscription=1
    ) as service:
        agent, full, other, seen, acker = await a_full_subscription(service)
        try:
            assert (await post(other.endpoint)).status_code == 201
            assert service.service is not None
            assert service.service.metrics.acknowledged_unstored_total == 1
            response = await post(full.endpoint)
            assert response.status_code == 429, response.text
            assert "undelivered messages" in response.json()["message"]
            await asyncio.sleep(0.2)
            assert len(seen) == 2  # nothing was written for the refused push
        finally:
            acker.cancel()
            await agent.close()


async def test_pushes_awaiting_their_ack_are_bounded(
    quick: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_AWAITING_ACK pushes waiting at once, the next ones are stored first."""
    from tidings.service import live_acks

    assert quick.service is not None
    acks = quick.service.live_acks
    monkeypatch.setattr(live_acks, "MAX_AWAITING_ACK", 2)
    agent = await quick.agent()
    registration = await agent.register()
    seen: list[str] = []
    acker = asyncio.ensure_future(auto_ack(agent, seen))
    try:
        assert (await post(registration.endpoint)).status_code == 201  # a quick ack
        acks.expect("someone", "m1")  # two pushes of others wait for their acks
        acks.expect("someone", "m2")
        assert not acks.has_room()
        stores = Calls(quick, "store_message")
        assert (await post(registration.endpoint)).status_code == 201
        assert stores.count == 1  # stored first: no room to wait
        assert quick.service.metrics.acknowledged_unstored_total == 0
        assert acks.settle("m1") is None and acks.settle("m2") is None
        assert (await post(registration.endpoint)).status_code == 201
        assert quick.service.metrics.acknowledged_unstored_total == 1
        assert len(acks) == 0
    finally:
        acker.cancel()
        await agent.close()


def test_the_wait_follows_the_connections_round_trip() -> None:
    from tidings.service.live_acks import ack_wait

    assert ack_wait(0.001, 0.05) == pytest.approx(0.006)  # 4 round trips + 2 ms
    assert ack_wait(0.02, 0.05) == 0.05  # at most live_ack_wait
    assert ack_wait(0.06, 0.05) == 0.0  # too slow: stored first
    assert ack_wait(float("inf"), 0.05) == 0.0  # no ack yet, or one overdue


async def test_a_request_cancelled_while_it_waits_for_the_ack_is_cancelled() -> None:
    """Cancelling the request cancels the future it awaits: that must not read as the
    wait's time running out (the push would be stored and answered for a request that
    is gone); a wait that does run out still answers None."""
    acks = LiveAcks()
    acks.expect("ua", "m1")
    waiting = asyncio.create_task(acks.wait("m1", 30.0))
    await asyncio.sleep(0)  # the task now awaits the ack
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert waiting.cancelled()
    acks.settle("m1")
    acks.expect("ua", "m2")
    assert await acks.wait("m2", 0.001) is None
    acks.settle("m2")
    assert len(acks) == 0
