"""Structures a client can grow, each filled past its bound (patched small in its module):
ids pushed on one RFC 8030 monitor, acknowledgements waiting for the store, the
acknowledged ids a WebSocket remembers, and the exemption cache of client addresses
(docs/security.md, "What a client can grow"). Each test fails with its bound removed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from rfc8030.helpers import path_of, push, subscribe, token_of
from support.channels import PushingChannel
from support.service import TestAgent, running_service
from tidings.http2 import H2Client
from tidings.service import acknowledgements, hub, limits, monitor, ws_protocol, ws_session
from tidings.service.core import PushService
from tidings.service.limits import MemoryRateLimiter, parse_networks
from tidings.service.monitor import PushMonitor
from tidings.service.store import StoredMessage
from tidings.service.vapid_check import VapidChecker
from tidings.service.ws_session import WebSocketSession
from tidings.webpush import Urgency, VapidKey, sign_vapid
from tidings.webpush.links import REL_RECEIPT, link_target

BOUND = 4


def message(index: int) -> StoredMessage:
    now = time.time()
    return StoredMessage(f"m{index}", "u" * 32, "c", b"", 60, now, now + 60)


async def test_ids_pushed_on_a_long_lived_monitor_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(monitor, "MAX_SENT", BOUND)

    async def no_subscription(uaid: str, channel_id: str) -> None:
        return None

    service: Any = SimpleNamespace(
        store=SimpleNamespace(get_subscription=no_subscription),
        message_path=lambda ref: "/m/" + ref.message_id,
        metrics=SimpleNamespace(delivered=lambda message: None),
        note_delivered=lambda message, via: None,
    )
    channel = PushingChannel()
    watcher = PushMonitor(service, channel, "u" * 32, None, Urgency.VERY_LOW)  # type: ignore[arg-type]
    for index in range(3 * BOUND):
        assert await watcher._push(message(index), time.time())
        assert len(watcher._sent) <= BOUND
    assert not await watcher._push(message(3 * BOUND - 1), time.time())  # sent once
    assert len(channel.pushed) == 3 * BOUND


async def _delivered(agent: TestAgent, url: str, count: int) -> list[dict[str, Any]]:
    """`count` messages pushed to a new subscription of `agent`, received, not acked."""
    registration = await agent.register()
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(count):
            answer = await client.post(registration.endpoint, headers={"ttl": "60"})
            assert answer.status_code == 201
    return [await agent.expect("notification") for _ in range(count)]


def _acks(frames: list[dict[str, Any]], code: int = 100) -> dict[str, Any]:
    updates = [{"channelID": f["channelID"], "version": f["version"], "code": code} for f in frames]
    return {"messageType": "ack", "updates": updates}


def _made_up_acks(count: int, code: int = 100) -> dict[str, Any]:
    updates = [
        {"channelID": str(uuid.uuid4()), "version": uuid.uuid4().hex, "code": code}
        for _ in range(count)
    ]
    return {"messageType": "ack", "updates": updates}


@contextlib.asynccontextmanager
async def _hanging_deletes(service: PushService) -> AsyncIterator[asyncio.Event]:
    """The store's deletes of acknowledged messages wait until the block ends; the
    event is set once the first one has started."""
    release, hanging = asyncio.Event(), asyncio.Event()
    real_delete = service.store.delete_messages

    async def hanging_delete(keys: list[tuple[str, str]]) -> list[StoredMessage | None]:
        hanging.set()
        await release.wait()
        return await real_delete(keys)

    service.store.delete_messages = hanging_delete  # type: ignore[method-assign]
    try:
        yield hanging
    finally:
        release.set()


async def test_acknowledgements_waiting_for_a_slow_store_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client acknowledging its messages while the store's deletes hang: the waiting
    list stops at the bound (those past it are dropped: their messages stay stored and
    come again); acknowledged ids per connection are bounded too."""
    monkeypatch.setattr(acknowledgements, "MAX_PENDING_ACKS", BOUND)
    monkeypatch.setattr(ws_session, "RECENT_ACKS", BOUND)
    async with running_service(tmp_path) as running:
        service = running.service
        assert service is not None
        agent = await running.agent()
        assert agent.uaid is not None
        (session,) = service.hub.agents(agent.uaid)
        assert isinstance(session, WebSocketSession)
        frames = await _delivered(agent, running.url, 9 * BOUND)
        async with _hanging_deletes(service) as hanging:
            for batch in range(3):
                await agent.send(_acks(frames[batch * 3 * BOUND : (batch + 1) * 3 * BOUND]))
                if batch == 0:  # the first batch's delete hangs; the next ones wait
                    async with asyncio.timeout(5):
                        await hanging.wait()
            await agent.send("{}")  # a ping: answered once every ack before it was handled
            assert await agent.receive() == {}
            assert len(service._acks) <= BOUND
            assert len(session._acked) <= BOUND
        await agent.close()


async def test_made_up_acknowledgements_do_not_crowd_out_other_user_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Acknowledgements wait for their delete in one queue per node. A client that
    acknowledged ids it was never sent (500 to a frame, as fast as it could write: 200,000
    in 2 s) filled that queue: every other user agent's acks were dropped meanwhile (their
    messages came again), the store spent its writes deleting nothing, and codes other
    than 100 (and nacks) logged a line each. An ack now counts only for a message its
    connection sent."""
    monkeypatch.setattr(acknowledgements, "MAX_PENDING_ACKS", BOUND)
    caplog.set_level(logging.INFO)
    async with running_service(tmp_path) as running:
        service = running.service
        assert service is not None
        victim = await running.agent()
        (frame,) = await _delivered(victim, running.url, 1)
        attacker = await running.agent()
        own = await _delivered(attacker, running.url, 1)
        deletes: list[int] = []
        real_delete = service.store.delete_messages

        async def counted(keys: list[tuple[str, str]]) -> list[StoredMessage | None]:
            deletes.append(len(keys))
            return await real_delete(keys)

        service.store.delete_messages = counted  # type: ignore[method-assign]
        async with _hanging_deletes(service):
            for _ in range(3):
                await attacker.send(_made_up_acks(3 * BOUND, code=102))
            await attacker.send(_acks(own + own))  # its own message, twice: one delete
            for _ in range(3):
                await attacker.send({"messageType": "nack", "version": uuid.uuid4().hex})
            await attacker.send("{}")
            assert await attacker.receive() == {}
            assert len(service._acks) <= 1
            await victim.send(_acks([frame]))
            await victim.send("{}")
            assert await victim.receive() == {}
            assert len(service._acks) <= 2
        for _ in range(250):
            if await service.store.count_messages() == 0:
                break
            await asyncio.sleep(0.02)
        assert await service.store.count_messages() == 0  # the victim's ack was kept
        assert sum(deletes) == 2
        noted = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert not [line for line in noted if "acknowledged with code" in line], noted
        assert not [line for line in noted if "nack from" in line], noted
        await victim.close()
        await attacker.close()


async def test_a_backlog_larger_than_the_remembered_ids_is_acknowledged_after_it_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection remembers MAX_UNACKED sent ids; a client that receives more before it
    acknowledges them (a backlog above the bound, max_messages_per_user_agent raised)
    must still have every ack taken, or the oldest stay stored and come again on every
    connection. Made-up ids are still refused: no more than were forgotten are taken."""
    monkeypatch.setattr(ws_session, "MAX_UNACKED", BOUND)
    async with running_service(tmp_path) as running:
        service = running.service
        assert service is not None
        agent = await running.agent()
        frames = await _delivered(agent, running.url, 3 * BOUND)
        deleted: list[str] = []
        real_delete = service.store.delete_messages

        async def counted(keys: list[tuple[str, str]]) -> list[StoredMessage | None]:
            deleted.extend(message_id for _, message_id in keys)
            return await real_delete(keys)

        service.store.delete_messages = counted  # type: ignore[method-assign]
        await agent.send(_acks(frames))
        await agent.send(_made_up_acks(3 * BOUND))  # nothing forgotten is left to ack
        await agent.send("{}")
        assert await agent.receive() == {}
        for _ in range(250):
            if await service.store.count_messages() == 0:
                break
            await asyncio.sleep(0.02)
        assert await service.store.count_messages() == 0  # none comes again
        assert sorted(deleted) == sorted(frame["version"] for frame in frames)
        await agent.close()
        again = TestAgent(running.ws_url)
        again.registrations = agent.registrations
        await again.connect(agent.uaid)
        await again.no_frame(0.3)
        await again.close()


def test_the_exemption_cache_of_client_addresses_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "EXEMPT_CACHE", BOUND)
    limiter = MemoryRateLimiter({}, parse_networks("127.0.0.0/8"))
    for index in range(3 * BOUND):
        assert not limiter.exempt(f"192.0.2.{index}")
        assert len(limiter._exempt_cache) <= BOUND
    assert limiter.exempt("127.0.0.1")


async def test_monitors_of_one_user_agent_are_bounded(tmp_path: Path) -> None:
    """GETs of one subscription (or its set) kept open past `max_monitors_per_user_agent`
    get 429 errno 123; closing one makes room. Before, each was one more entry the hub
    offered every message to, with no limit but the connections a client could open."""
    async with running_service(tmp_path, max_monitors_per_user_agent=BOUND) as running:
        service = running.service
        assert service is not None
        async with await H2Client.connect(running.url) as client:
            ua = await subscribe(client)
            uaid, _ = service.open_subscription(token_of(ua.subscription))
            monitors = [
                await client.open_stream("GET", path_of(ua.subscription)) for _ in range(BOUND)
            ]
            async with asyncio.timeout(5):
                while len(service.hub.agents(uaid)) < BOUND:
                    await asyncio.sleep(0.01)
            refused = await client.open_stream("GET", path_of(ua.subscription))
            answer = await asyncio.wait_for(refused.response, 5)
            assert answer.status == 429 and answer.headers["retry-after"] == "60"
            assert json.loads(answer.body)["errno"] == 123
            assert len(service.hub.agents(uaid)) == BOUND
            client.cancel(monitors.pop())
            async with asyncio.timeout(5):
                while len(service.hub.agents(uaid)) >= BOUND:
                    await asyncio.sleep(0.01)
            again = await client.open_stream("GET", path_of(ua.subscription))
            status, _ = await push(client, ua, "still monitored")
            assert status == 201
            assert ua.decrypt(await again.next_push(5)) == "still monitored"
            for stream in [*monitors, again]:
                client.cancel(stream)


async def _receipt_monitors(
    client: H2Client, service: PushService, count: int
) -> tuple[str, list[Any]]:
    """A new receipt subscription's path and `count` open monitors of it (streams)."""
    ua = await subscribe(client)
    status, headers = await push(client, ua, "with a receipt", prefer="respond-async")
    assert status == 202
    receipts = path_of(link_target(headers["link"], REL_RECEIPT) or "")
    monitors = [await client.open_stream("GET", receipts) for _ in range(count)]
    receipt_id = service.open_receipt(token_of(receipts))
    async with asyncio.timeout(5):
        while service.hub.receipt_listeners(receipt_id) < count:
            await asyncio.sleep(0.01)
    return receipts, monitors


async def test_monitors_of_one_receipt_subscription_are_bounded(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_monitors_per_user_agent=BOUND) as running:
        service = running.service
        assert service is not None
        async with await H2Client.connect(running.url) as client:
            receipts, monitors = await _receipt_monitors(client, service, BOUND)
            receipt_id = service.open_receipt(token_of(receipts))
            refused = await client.open_stream("GET", receipts)
            answer = await asyncio.wait_for(refused.response, 5)
            assert answer.status == 429 and json.loads(answer.body)["errno"] == 123
            assert service.hub.receipt_listeners(receipt_id) == BOUND
            for stream in monitors:
                client.cancel(stream)


def test_the_vapid_verification_cache_is_bounded() -> None:
    """Every valid token a sender signs is cached (ECDSA once per token): fresh tokens
    push out the oldest."""
    checker = VapidChecker("http://push.example", cache_size=BOUND)
    key = VapidKey.generate()
    for index in range(3 * BOUND):
        signed = sign_vapid(key, "http://push.example/push/x", f"mailto:{index}@example.com")
        assert checker.check({"authorization": signed.authorization}, None) is not None
        assert len(checker._cache) <= BOUND


def test_ack_updates_handled_per_frame_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_protocol, "_MAX_UPDATES", BOUND)
    updates = [
        {"channelID": str(uuid.uuid4()), "version": uuid.uuid4().hex, "code": 100}
        for _ in range(3 * BOUND)
    ]
    ack = ws_protocol.parse_client_frame(json.dumps({"messageType": "ack", "updates": updates}))
    assert isinstance(ack, ws_protocol.Ack) and len(ack.updates) == BOUND


class StalledChannel:
    """A WebSocket whose peer does not read: every write waits."""

    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def send_text(self, text: str) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code


async def test_sends_queued_for_a_websocket_that_does_not_read_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_QUEUED_SENDS the connection closes 1013; its messages stay stored."""
    monkeypatch.setattr(ws_session, "MAX_QUEUED_SENDS", BOUND)
    service: Any = SimpleNamespace(hub=SimpleNamespace(detach=lambda uaid, session: None))
    channel = StalledChannel()
    session = WebSocketSession(service, channel)  # type: ignore[arg-type]
    session.uaid = "u" * 32
    for index in range(3 * BOUND):
        session.offer(message(index))
        assert session._queued <= BOUND
    await asyncio.sleep(0.01)
    assert channel.closed_with == ws_protocol.CLOSE_TRY_AGAIN_LATER and session.closed
    assert not session._tasks  # the stalled sends were cancelled with the connection


def test_live_messages_held_by_a_monitor_while_its_store_read_waits_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past monitor.MAX_HELD the monitor ends (the messages stay stored)."""
    monkeypatch.setattr(monitor, "MAX_HELD", BOUND)
    channel = PushingChannel()
    watcher = PushMonitor(SimpleNamespace(), channel, "u" * 32, None, Urgency.VERY_LOW)  # type: ignore[arg-type]
    for index in range(3 * BOUND):
        watcher.offer(message(index))
        assert len(watcher._held or ()) <= BOUND
    assert channel.closed.is_set() and not channel.pushed


def _counted_receipt_reads(service: PushService) -> list[float]:
    """When each store read of pending receipts starts, from now on."""
    reads: list[float] = []
    real_pending = service.store.pending_receipts

    async def counted(receipt_id: str, limit: int) -> Any:
        reads.append(time.monotonic())
        return await real_pending(receipt_id, limit)

    service.store.pending_receipts = counted  # type: ignore[method-assign]
    return reads


@contextlib.asynccontextmanager
async def _receipt_reads(
    tmp_path: Path, count: int
) -> AsyncIterator[tuple[PushService, H2Client, list[Any], list[float]]]:
    """A service with `count` open monitors of one receipt subscription, each past its
    first read; and when each store read of pending receipts starts from then on."""
    async with running_service(tmp_path, max_monitors_per_user_agent=count) as running:
        service = running.service
        assert service is not None
        reads = _counted_receipt_reads(service)
        async with await H2Client.connect(running.url) as client:
            _, monitors = await _receipt_monitors(client, service, count)
            await asyncio.sleep(0.3)  # each has made its first read
            yield service, client, monitors, reads


async def test_open_receipt_monitors_poll_the_store_within_a_node_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each open receipt monitor read the store every RECEIPT_POLL (2 s) whatever else
    was open: idle GETs cost nothing to hold, so 2,000 of them (20 connections) took 5%
    of a core and 1,000 store reads a second, and a /64 at its connection cap (409,600
    streams) far more than the node has. Between them the node's monitors now poll at
    most RECEIPT_POLLS_PER_SECOND; a receipt queued on this node still wakes its monitor
    at once (only other nodes' receipts wait for the poll: tests/rfc8030)."""
    monkeypatch.setattr(monitor, "RECEIPT_POLL", 0.02)
    monkeypatch.setattr(monitor, "RECEIPT_POLLS_PER_SECOND", 20.0)
    async with _receipt_reads(tmp_path, 4 * BOUND) as (_, _, _, reads):
        start = time.monotonic()
        await asyncio.sleep(1.0)
        polled = len([at for at in reads if at >= start])
        # Unbudgeted: 16 monitors x 50 polls a second. Budgeted: 20 a second.
        assert polled <= 2 * 20, polled


async def test_an_expiry_sweep_wakes_many_receipt_monitors_only_through_their_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that expired any message woke every receipt monitor of the node at once,
    each reading the store: with a message expiring every minute, a client holding
    409,600 idle receipt GETs (a /64 at its connection cap) had the node make 409,600
    reads a minute in one burst. Past WAKE_ALL_RECEIPT_MONITORS the budgeted polls find
    the 410 receipts instead; a few monitors are still woken at once."""
    monkeypatch.setattr(monitor, "RECEIPT_POLL", 60.0)  # no poll during the test
    monkeypatch.setattr(hub, "WAKE_ALL_RECEIPT_MONITORS", BOUND)
    async with _receipt_reads(tmp_path, 4 * BOUND) as (service, client, monitors, reads):
        before = len(reads)
        service.hub.notify_all_receipts()
        await asyncio.sleep(0.3)
        assert len(reads) == before, len(reads) - before
        for stream in monitors[BOUND:]:
            client.cancel(stream)
        async with asyncio.timeout(5):
            while service.hub.receipt_monitors() > BOUND:
                await asyncio.sleep(0.01)
        service.hub.notify_all_receipts()  # few: woken at once
        await asyncio.sleep(0.3)
        assert len(reads) == before + BOUND


async def test_ack_codes_a_client_makes_up_do_not_grow_the_metrics(tmp_path: Path) -> None:
    """`tidings_acks` is counted by ack code, and the code is whatever integer the
    client sends: each new one was a new label kept forever (and a new series in
    /metrics and /api/stats). Codes other than Firefox's 100, 101 and 102 are counted
    together as 0."""
    async with running_service(tmp_path) as running:
        service = running.service
        assert service is not None
        agent = await running.agent()
        frames = await _delivered(agent, running.url, 3 * BOUND)
        for code, frame in enumerate(frames, start=1000):
            await agent.send(_acks([frame], code=code))
        await agent.send("{}")
        assert await agent.receive() == {}
        assert set(service.metrics.acks.counts) <= {0, 100, 101, 102}
        assert service.metrics.acks.counts[0] == 3 * BOUND
        await agent.close()
