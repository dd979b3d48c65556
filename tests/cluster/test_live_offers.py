"""The fast path of live_acks.py across nodes (live_offers.py): a push accepted by a node
that does not hold its user agent is offered to the node that does, written to the
quick connection there and answered by its ack, never stored; anything else (not
acknowledged in time, no answer, no room) and it is stored first, delivered once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from cluster.conftest import in_process_nodes
from service.test_live_acks import (
    Calls,
    a_full_subscription,
    acking_agent,
    auto_ack,
    nothing_left,
    post,
    settled,
)
from service.test_live_acks_postgres import ack_measured
from support.service import Registration, RunningService, TestAgent
from tidings.service import live_acks
from tidings.service.cluster import redis_bus
from tidings.service.cluster.redis_bus import RedisBus
from tidings.service.store import StoredMessage
from tidings.webpush import VapidKey, sign_vapid

if TYPE_CHECKING:
    from tidings.service.live_offers import LiveOfferTaker

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[RunningService, RunningService]]:
    """Node a holds the user agent, pushes come to node b; a quick ack is waited for up
    to 5 s (a loaded machine's quick acks are all in time)."""
    async with in_process_nodes(tmp_path, live_ack_wait=5.0) as (a, b):
        yield a, b


def bus_of(node: RunningService) -> RedisBus:
    assert node.service is not None and isinstance(node.service.cluster, RedisBus)
    return node.service.cluster


def taker_of(node: RunningService) -> LiveOfferTaker:
    from tidings.service.live_offers import LiveOfferTaker  # here: the module runs on main

    taker = bus_of(node).offer_taker
    assert isinstance(taker, LiveOfferTaker)
    return taker


def at(node: RunningService, endpoint: str) -> str:
    """The endpoint, asked of `node` (both nodes' tokens open everywhere)."""
    path = endpoint.split("/push/", 1)[1]
    return f"{node.url}/push/{path}"


async def eventually_empty(node: RunningService) -> None:
    """Until the shared store holds no message (routes and deletes still on their way)."""
    for _ in range(250):
        if await settled(node) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("messages left stored")


async def quick_on(a: RunningService) -> tuple[TestAgent, Registration]:
    """A user agent on node a, its one push acknowledged (a quick connection: its next
    pushes are written first), acking nothing more unless told."""
    agent = await a.agent()
    registration = await agent.register()
    assert (await post(registration.endpoint)).status_code == 201
    await agent.next_notification()  # acknowledged at once
    await ack_measured(a, agent.uaid)
    return agent, registration


async def quick_agent(a: RunningService) -> tuple[TestAgent, str, list[str], asyncio.Future[None]]:
    """A user agent on node a that acks every push, its endpoint, and its quick ack
    measured (one push through a, stored first)."""
    agent = await a.agent()
    registration = await agent.register()
    seen: list[str] = []
    acker = asyncio.ensure_future(auto_ack(agent, seen))
    assert (await post(registration.endpoint)).status_code == 201
    await ack_measured(a, agent.uaid)
    return agent, registration.endpoint, seen, acker


async def test_a_push_at_the_other_node_is_acknowledged_and_never_stored(
    nodes: tuple[RunningService, RunningService],
) -> None:
    a, b = nodes
    assert a.service is not None and b.service is not None
    agent, endpoint, seen, acker = await quick_agent(a)
    try:
        stores = Calls(b, "store_message")
        for n in range(3):
            response = await post(at(b, endpoint))
            assert response.status_code == 201, n
            await ack_measured(a, agent.uaid)
        assert stores.count == 0  # answered by the acks on node a
        assert b.service.metrics.acknowledged_unstored_total == 3
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(b.url + "/metrics")).text
        assert "tidings_pushes_acknowledged_unstored_total 3.0" in metrics
        assert await settled(a) == 0 and await settled(b) == 0
        assert len(seen) == 4 and len(set(seen)) == 4  # each exactly once
        assert len(a.service.live_acks) == 0 and len(taker_of(a)) == 0
        assert not bus_of(b)._offers
    finally:
        acker.cancel()
        await agent.close()
    await nothing_left(a, agent.uaid)


async def test_a_signed_push_acknowledged_elsewhere_reads_acknowledged(
    nodes: tuple[RunningService, RunningService],
) -> None:
    a, b = nodes
    key = VapidKey.generate()
    agent, registration, _, acker = await acking_agent(a, key.public_key_b64)
    try:
        to_a, signed = (
            {"authorization": sign_vapid(key, node.url, "mailto:a@example.com").authorization}
            for node in (a, b)
        )  # each node's own origin (no public URL in common here)
        assert (await post(at(a, registration.endpoint), **to_a)).status_code == 201
        await ack_measured(a, agent.uaid)
        response = await post(at(b, registration.endpoint), **signed)
        assert response.status_code == 201
        assert b.service is not None and b.service.metrics.acknowledged_unstored_total == 1
        async with httpx.AsyncClient() as client:
            status = await client.get(response.headers["location"], headers=signed)
        assert json.loads(status.content)["state"] == "acknowledged"
    finally:
        acker.cancel()
        await agent.close()


async def test_an_offer_acked_late_is_stored_delivered_once_and_deleted(tmp_path: Path) -> None:
    """Written on node a, not acknowledged within the wait: node b stores it. The ack
    comes while b is storing; a keeps it until b's route (sent after the commit) comes,
    then deletes the row; the route is not written to the connection again."""
    async with in_process_nodes(tmp_path, live_ack_wait=0.3) as (a, b):
        assert a.service is not None and b.service is not None
        agent, registration = await quick_on(a)
        stores = Calls(b, "store_message")
        stores.release = asyncio.Event()
        pushing = asyncio.ensure_future(post(at(b, registration.endpoint)))
        frame = await agent.expect("notification")  # written before it is stored
        await asyncio.wait_for(stores.entered.wait(), 10)  # no ack in time: b stores it
        assert frame["version"] in a.service.live_acks  # held on a until its route
        await agent.ack(frame)
        await agent.send({"messageType": "ping"})
        await agent.receive()  # the ping's answer: the ack before it was read
        assert await settled(a) == 0  # nothing deleted yet: not committed
        stores.release.set()
        assert (await pushing).status_code == 201
        assert b.service.metrics.acknowledged_unstored_total == 0
        for _ in range(500):  # the route reaches a, which deletes the row
            if frame["version"] not in a.service.live_acks:
                break
            await asyncio.sleep(0.01)
        assert await settled(a) == 0
        await agent.no_frame(0.5)  # the route did not bring it twice
        await agent.close()
        await nothing_left(a, agent.uaid)


async def test_an_offer_never_acked_is_stored_and_delivered_once(tmp_path: Path) -> None:
    async with in_process_nodes(tmp_path, live_ack_wait=0.3) as (a, b):
        assert a.service is not None and b.service is not None
        agent, registration = await quick_on(a)
        stores = Calls(b, "store_message")
        assert (await post(at(b, registration.endpoint))).status_code == 201
        assert stores.count == 1
        frame = await agent.expect("notification")
        for _ in range(500):  # b's route (after its commit) reaches a
            if frame["version"] not in a.service.live_acks:
                break
            await asyncio.sleep(0.01)
        await agent.no_frame(0.5)  # once only
        assert await settled(b) == 1
        await agent.ack(frame)  # now an ordinary ack: the stored row goes
        await eventually_empty(a)
        await agent.close()


async def test_no_answer_stores_the_push_and_delivers_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is lost (or the holder is an old node, which drops the kind it does
    not know): the accepting node stores the push once its wait is over."""
    async with in_process_nodes(tmp_path, live_ack_wait=0.3) as (a, b):
        assert a.service is not None and b.service is not None
        agent, endpoint, seen, acker = await quick_agent(a)
        try:
            stores = Calls(b, "store_message")
            # Acknowledged on a in time, the answer lost: b stores it and routes it to
            # a, which knows the ack and deletes the row instead of writing it again.
            monkeypatch.setattr(bus_of(a), "_answer_offer", lambda *args: None)
            assert (await post(at(b, endpoint))).status_code == 201
            assert stores.count == 1 and bus_of(b).offers_unanswered == 1
            await ack_measured(a, agent.uaid)
            # An old node: the offer is dropped unread; stored, then routed as ever.
            monkeypatch.setattr(bus_of(a), "_take_offer", lambda offer: None)
            assert (await post(at(b, endpoint))).status_code == 201
            assert stores.count == 2 and bus_of(b).offers_unanswered == 2
            await eventually_empty(a)
            assert b.service.metrics.acknowledged_unstored_total == 0
            await asyncio.sleep(0.3)
            assert len(seen) == 3 and len(set(seen)) == 3
        finally:
            acker.cancel()
            await agent.close()


@pytest.mark.parametrize("full", ["offers", "answers", "holder"])
async def test_past_a_bound_the_push_is_stored_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: str
) -> None:
    """Offers awaiting an answer on the accepting node, answers queued on the holder, and
    pushes awaiting an ack on the holder are bounded; past each, stored first."""
    async with in_process_nodes(tmp_path, live_ack_wait=0.3) as (a, b):
        assert a.service is not None and b.service is not None
        agent, endpoint, seen, acker = await quick_agent(a)
        try:
            if full == "offers":
                monkeypatch.setattr(redis_bus, "MAX_PENDING_OFFERS", 2)
                for n in range(2):  # two pushes of others await their answers
                    bus_of(b)._offers[f"other-{n}"] = asyncio.get_running_loop().create_future()
            elif full == "answers":
                monkeypatch.setattr(redis_bus, "MAX_PENDING_ANSWERS", 0)
            else:
                monkeypatch.setattr(live_acks, "MAX_AWAITING_ACK", 0)
            stores = Calls(b, "store_message")
            assert (await post(at(b, endpoint))).status_code == 201
            assert stores.count == 1
            assert b.service.metrics.acknowledged_unstored_total == 0
            await eventually_empty(a)
            await asyncio.sleep(0.3)
            assert len(seen) == 2  # delivered once
            if full == "answers":
                assert bus_of(a).answers_dropped == 1
            else:
                assert bus_of(b).offers_unanswered == 0  # stored at once: no wait
        finally:
            acker.cancel()
            await agent.close()


async def test_a_quota_refusal_comes_before_anything_is_written(tmp_path: Path) -> None:
    nodes = in_process_nodes(tmp_path, live_ack_wait=5.0, max_messages_per_subscription=1)
    async with nodes as (a, b):
        agent, full, _, seen, acker = await a_full_subscription(a)
        try:
            await ack_measured(a, agent.uaid)
            response = await post(at(b, full.endpoint))
            assert response.status_code == 429, response.text
            await asyncio.sleep(0.3)
            assert len(seen) == 1  # nothing was written for the refused push
            assert not bus_of(b)._offers
        finally:
            acker.cancel()
            await agent.close()


async def test_only_the_push_s_own_connection_can_ack_an_offer(tmp_path: Path) -> None:
    """Another user agent on the holder sends an ack for the offered push's id: it does
    not answer the offer (never sent on that connection), so the push is stored, and
    only its own user agent's ack deletes it."""
    async with in_process_nodes(tmp_path, live_ack_wait=0.3) as (a, b):
        assert a.service is not None and b.service is not None
        owner, other = await a.agent(), await a.agent()
        registration = await owner.register()
        await other.register()
        assert (await post(registration.endpoint)).status_code == 201
        await owner.next_notification()
        await ack_measured(a, owner.uaid)
        stores = Calls(b, "store_message")
        stores.release = asyncio.Event()
        pushing = asyncio.ensure_future(post(at(b, registration.endpoint)))
        frame = await owner.expect("notification")
        await other.ack(frame)  # a forged ack, on another user agent's connection
        await other.send({"messageType": "ping"})
        await other.receive()  # read by node a
        await asyncio.wait_for(stores.entered.wait(), 10)  # not acknowledged: stored
        stores.release.set()
        assert (await pushing).status_code == 201
        assert b.service.metrics.acknowledged_unstored_total == 0
        for _ in range(500):  # b's route reaches a
            if frame["version"] not in a.service.live_acks:
                break
            await asyncio.sleep(0.01)
        assert await settled(a) == 1  # the forged ack deleted nothing
        await owner.ack(frame)
        await eventually_empty(a)
        await owner.close()
        await other.close()


async def test_a_user_agent_held_nowhere_is_not_offered_each_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first push finds no holder (its offer's script call says so): stored. The
    next ones within NOT_HELD_FOR are stored without the check and the offer."""
    async with in_process_nodes(tmp_path, live_ack_wait=5.0) as (a, b):
        agent = await a.agent()
        registration = await agent.register()
        await agent.close()
        bus = bus_of(b)
        for _ in range(500):  # node a releases its presence entry
            if not await bus._redis.exists(bus._key(agent.uaid)):
                break
            await asyncio.sleep(0.01)
        offers: list[str] = []
        original = redis_bus.encode_offer

        def counted(message: StoredMessage, node: str, wait: float) -> str:
            offers.append(message.message_id)
            return original(message, node, wait)

        monkeypatch.setattr(redis_bus, "encode_offer", counted)
        checks, stores = Calls(b, "check_message"), Calls(b, "store_message")
        for _ in range(3):
            assert (await post(at(b, registration.endpoint))).status_code == 201
        assert len(offers) == 1 and checks.count == 1 and stores.count == 3
        assert not bus.may_hold(agent.uaid)
        bus._not_held[agent.uaid] = 0.0  # NOT_HELD_FOR is over
        assert bus.may_hold(agent.uaid)
        assert (await post(at(b, registration.endpoint))).status_code == 201
        assert len(offers) == 2 and stores.count == 4


async def test_a_kept_ack_whose_route_never_comes_deletes_after_the_hold(tmp_path: Path) -> None:
    """Offered, not acknowledged in time, stored by node b, whose route to node a is lost:
    a keeps the late ack until its hold is over (HOLD_FOR), then deletes the row."""
    async with in_process_nodes(tmp_path, live_ack_wait=0.3) as (a, b):
        assert a.service is not None and b.service is not None
        agent, registration = await quick_on(a)

        async def lost(message: StoredMessage) -> bool:
            return False  # published nowhere, as when the bus loses it

        bus_of(b).route = lost  # type: ignore[method-assign]
        stores = Calls(b, "store_message")
        stores.release = asyncio.Event()
        pushing = asyncio.ensure_future(post(at(b, registration.endpoint)))
        frame = await agent.expect("notification")
        await asyncio.wait_for(stores.entered.wait(), 10)  # not acknowledged in time
        stores.release.set()
        assert (await pushing).status_code == 201
        taker = taker_of(a)
        for _ in range(500):  # a's wait is over (b may have stopped waiting first)
            if taker._taken[frame["version"]][1] is not None:
                break
            await asyncio.sleep(0.01)
        _, expiry = taker._taken[frame["version"]]
        assert expiry is not None  # held, HOLD_FOR from the end of the wait
        await agent.ack(frame)
        await agent.send({"messageType": "ping"})
        await agent.receive()  # the ack was read: kept, the row committed
        assert await settled(a) == 1
        expiry.cancel()
        taker._expired(agent.uaid, frame["version"])  # the hold is over
        await eventually_empty(a)
        assert len(taker) == 0 and frame["version"] not in a.service.live_acks
        await agent.close()
