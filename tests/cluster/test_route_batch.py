"""Routes to another node go out together: one script call and one PUBLISH for the
messages of a moment, read back in order on the node holding the user agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from store.engines import delete_prefix, redis_url, require_redis
from tidings.service.cluster import redis_bus
from tidings.service.cluster.redis_bus import RedisBus
from tidings.service.store import StoredMessage


class Agent:
    """A connection that records what it is offered and withdrawn."""

    exclusive: ClassVar[bool] = True

    def __init__(self, uaid: str, expect: int) -> None:
        self.uaid: str | None = uaid
        self.offered: list[str] = []
        self.withdrawn: list[str] = []
        self._expect = expect
        self.done = asyncio.Event()

    def accepts(self, message: StoredMessage) -> bool:
        return True

    def offer(self, message: StoredMessage) -> None:
        self.offered.append(message.message_id)
        self._check()

    def withdraw(self, message_id: str) -> None:
        self.withdrawn.append(message_id)
        self._check()

    def _check(self) -> None:
        if len(self.offered) + len(self.withdrawn) >= self._expect:
            self.done.set()

    def quick_ack_wait(self) -> float:
        return 0.0

    def ack_overdue(self) -> None:
        return None

    async def close(self, code: int, reason: str) -> None:
        return None


def message(uaid: str, n: int) -> StoredMessage:
    now = time.time()
    return StoredMessage(f"m{n}", uaid, "ch", b"x" * 100, 60, now, now + 60)


@pytest.fixture
async def buses() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    require_redis()
    url = redis_url()
    pair = (RedisBus(url, node_id="a"), RedisBus(url, node_id="b"))

    async def redeliver(uaid: str, since: float) -> None:
        return None

    for bus in pair:
        await bus.start(redeliver)
    yield pair
    for bus in pair:
        await bus.stop()
    await delete_prefix(url)


async def test_messages_of_a_moment_go_to_the_holder_in_one_round_trip_in_order(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, b = buses
    held = Agent("ua1", expect=51)
    b.hub.attach("ua1", held)
    await asyncio.gather(*b._tasks)  # its claim is in Redis
    payloads: list[bytes] = []
    receive = b._on_bus_message

    def record(raw: bytes) -> None:
        payloads.append(raw)
        receive(raw)

    b._on_bus_message = record  # type: ignore[method-assign]
    routes = [a.route(message("ua1", n)) for n in range(50)]
    routes.append(a.route(message("nobody", 99)))  # held by no node: waits in the store
    # Started in one step, in order: the withdrawal is queued behind the messages.
    answers = await asyncio.gather(*routes, a.withdraw("ua1", "m49"))
    assert answers == [True] * 50 + [False, True]  # the withdrawal reached Redis
    await asyncio.wait_for(held.done.wait(), 10)
    assert held.offered == [f"m{n}" for n in range(50)]
    assert held.withdrawn == ["m49"]  # after its message, never before
    assert a._routes.batches == 1  # 52 routes, one script call
    assert len(payloads) == 1  # and one PUBLISH to b


async def test_a_message_for_a_user_agent_held_here_is_not_published(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, _ = buses
    a.hub.attach("ua2", Agent("ua2", expect=1))
    await asyncio.gather(*a._tasks)
    assert await a.route(message("ua2", 1)) is False  # its own: the hub had it
    assert await a.route(message("ua3", 2)) is False  # nobody's


async def test_routes_waiting_for_redis_are_bounded_and_the_rest_poked_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_bus, "MAX_QUEUED_ROUTES", 2)
    bus = RedisBus("redis://127.0.0.1:1/0?prefix=unreachable:", node_id="a")
    sent: list[int] = []

    async def route_many(routes: list[tuple[str, str]]) -> list[int]:
        sent.append(len(routes))
        raise ConnectionError("Redis is away")

    bus._routes._send = route_many  # type: ignore[assignment]
    answers = await asyncio.gather(*(bus.route(message(f"ua{n}", n)) for n in range(5)))
    assert answers == [False] * 5
    assert sent == [2]  # two queued for the round trip; the others not at all
    assert bus._missed == {f"ua{n}" for n in range(5)}  # holders poked once Redis answers
    await bus.stop()


async def test_a_route_under_way_when_the_bus_stops_fails_as_redis_gone_would(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, _ = buses
    started = asyncio.Event()

    async def stalled(routes: list[tuple[str, str]]) -> list[int]:
        started.set()
        await asyncio.Event().wait()  # Redis never answers
        raise AssertionError("unreachable")

    a._routes._send = stalled  # type: ignore[assignment]
    routing = asyncio.ensure_future(a.route(message("ua4", 1)))
    queued = asyncio.ensure_future(a.withdraw("ua4", "m1"))
    await started.wait()
    await a.stop()
    # The push is still answered (the message is stored), not cancelled with the bus.
    assert await routing is False
    assert await queued is False  # the DELETE is not answered a plain 204
    assert "ua4" in a._missed


async def test_receipt_notices_waiting_for_redis_are_bounded() -> None:
    """Each receipt queued publishes a notice without waiting for it: with Redis slow, a
    burst of receipts (a sender asking one per push) would pile up a task each. Past
    MAX_NOTICES_IN_FLIGHT they are skipped; the monitors' polls find those receipts."""
    bus = RedisBus("redis://127.0.0.1:1/0?prefix=unreachable:", node_id="a")
    released = asyncio.Event()
    published: list[str] = []

    async def slow_publish(channel: str, payload: str) -> int:
        await released.wait()
        published.append(payload)
        return 1

    bus._redis.publish = slow_publish  # type: ignore[method-assign]
    burst = redis_bus.MAX_NOTICES_IN_FLIGHT + 500
    for n in range(burst):
        bus.announce_receipt(f"r{n}")
    await asyncio.sleep(0)
    assert len(bus._tasks) == redis_bus.MAX_NOTICES_IN_FLIGHT
    assert bus.notices_skipped == 500
    released.set()
    async with asyncio.timeout(10):
        while bus._tasks:
            await asyncio.sleep(0.01)
    assert len(published) == redis_bus.MAX_NOTICES_IN_FLIGHT
    bus.announce_receipt("after")  # room again
    async with asyncio.timeout(10):
        while len(published) <= redis_bus.MAX_NOTICES_IN_FLIGHT:
            await asyncio.sleep(0.01)
    await bus.stop()
