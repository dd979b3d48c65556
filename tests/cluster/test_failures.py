"""Nodes die, Redis restarts, PostgreSQL goes away: no accepted message is lost.

Each test runs a stream of pushes while the failure happens and checks, after
de-duplication by message id, that every push answered 201 reached the user agent
exactly once, and (for the node crash) none after its TTL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cluster.conftest import Cluster, close_quietly, connect, push
from cluster.tcpproxy import CuttableProxy
from store.engines import PG_HOST, PG_PORT, RedisProcess, pg_url
from support.ci import require
from support.service import Registration, ServiceProcess, TestAgent

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(90)]


@dataclass
class Receiver:
    """Reads an agent's notifications, reconnecting to `fallback` when it is cut off."""

    agent: TestAgent
    fallback: ServiceProcess | None = None
    got: list[tuple[str, bytes | None, float]] = field(default_factory=list)
    reconnects: int = 0
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                n = await self.agent.next_notification(timeout=0.2, ack=False)
            except TimeoutError:
                if self.agent.closed.is_set() and self.agent._frames.empty():
                    assert self.fallback is not None, "the agent was disconnected"
                    await self._reconnect()
                continue
            self.got.append((n.version, n.plaintext, time.time()))
            with contextlib.suppress(Exception):
                await self.agent.ack(n.frame)

    async def _reconnect(self) -> None:
        assert self.fallback is not None
        while True:
            try:
                self.agent = await connect(self.fallback, self.agent)
                self.reconnects += 1
                return
            except Exception:
                await asyncio.sleep(0.1)

    def texts(self) -> collections.Counter[bytes | None]:
        """Plaintexts of the distinct messages received (duplicates dropped by id)."""
        unique = {version: text for version, text, _ in self.got}
        return collections.Counter(unique.values())

    async def wait_for(self, wanted: set[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.texts()):
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(self.texts()))
                raise AssertionError(f"{len(missing)} accepted messages never arrived: {missing}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await close_quietly(self.agent)


@dataclass
class Sent:
    text: bytes
    status: int
    ttl: int
    answered_at: float
    retry_after: str | None


async def stream(
    senders: list[ServiceProcess],
    registration: Registration,
    count: int,
    *,
    events: dict[int, object] | None = None,
    short_ttl_every: int = 0,
    interval: float = 0.02,
) -> list[Sent]:
    """Push `count` messages round-robin through `senders`; run events[i] before push i."""
    sent: list[Sent] = []
    async with httpx.AsyncClient(timeout=15) as client:
        for i in range(count):
            action = (events or {}).get(i)
            if action is not None:
                await asyncio.to_thread(action)  # type: ignore[arg-type]
            ttl = 1 if short_ttl_every and i % short_ttl_every == 0 else 600
            text = f"message {i}"
            try:
                r = await push(
                    senders[i % len(senders)], registration, text, ttl=ttl, client=client
                )
                status, retry = r.status_code, r.headers.get("retry-after")
            except httpx.HTTPError:
                status, retry = 0, None  # the node is gone: not accepted
            sent.append(Sent(text.encode(), status, ttl, time.time(), retry))
            await asyncio.sleep(interval)
    return sent


async def test_kill_9_of_the_node_holding_the_agent(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    agent = await connect(a)
    registration = await agent.register()
    receiver = Receiver(agent, fallback=b)
    receiver.start()
    try:
        sent = await stream([b, c], registration, 50, events={20: a.kill}, short_ttl_every=7)
        accepted = [s for s in sent if s.status == 201]
        assert len(accepted) == len(sent)  # b and c kept accepting throughout
        lasting = {s.text for s in accepted if s.ttl > 1}
        await receiver.wait_for(lasting, timeout=20)
        await asyncio.sleep(1.2)  # let any straggler (a duplicate, a late short TTL) arrive
        assert receiver.reconnects == 1
        counts = receiver.texts()
        assert all(n == 1 for n in counts.values()), counts  # each message stored once
        # Never after its TTL: a short-lived message arrives within its second or not at all.
        answered = {s.text: s.answered_at for s in accepted}
        for _, text, received_at in receiver.got:
            sent_ttl = next(s.ttl for s in accepted if s.text == text)
            assert text in answered
            if sent_ttl == 1:
                assert received_at <= answered[text] + 1.5, text
    finally:
        await receiver.stop()


async def test_redis_restart_degrades_to_stored_delivery_and_recovers(
    cluster: Cluster, tmp_path: Path
) -> None:
    require(RedisProcess.available(), "redis-server")
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    cluster.cluster_url = redis.url
    try:
        a, b = await cluster.start("a", "b")
        agent = await connect(a)
        registration = await agent.register()
        receiver = Receiver(agent)  # no fallback: the connection must survive
        receiver.start()
        try:
            sent = await stream([b], registration, 60, events={15: redis.kill, 35: redis.start})
            assert all(s.status == 201 for s in sent), [s.status for s in sent]
            await receiver.wait_for({s.text for s in sent}, timeout=15)
            assert receiver.reconnects == 0
            # Live delivery is back.
            started = time.monotonic()
            assert (await push(b, registration, "after")).status_code == 201
            await receiver.wait_for({b"after"}, timeout=5)
            assert time.monotonic() - started < 2
            async with httpx.AsyncClient() as client:
                health = (await client.get(b.url + "/health")).json()
            assert health["cluster"] == "ok"
        finally:
            await receiver.stop()
    finally:
        redis.kill()


async def test_postgresql_unavailable_gives_503_and_loses_nothing_accepted(
    cluster: Cluster,
) -> None:
    proxy = CuttableProxy(PG_HOST, PG_PORT)
    proxy.start()
    try:
        database = cluster.store_url.rsplit("/", 1)[1]
        through_proxy = pg_url(database).replace(f":{PG_PORT}/", f":{proxy.port}/")
        a = cluster.node("a")
        b = cluster.node("b", store_url=through_proxy + "?timeout=2")
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        agent = await connect(a)
        registration = await agent.register()
        receiver = Receiver(agent)
        receiver.start()
        try:
            sent = await stream([b], registration, 60, events={20: proxy.cut, 40: proxy.restore})
            codes = collections.Counter(s.status for s in sent)
            assert set(codes) == {201, 503}, codes
            assert all(s.retry_after for s in sent if s.status == 503)
            # Recovered: the node's pool reconnects on its own (with back-off).
            deadline = time.monotonic() + 15
            while (await push(b, registration, "after")).status_code != 201:
                assert time.monotonic() < deadline, "no recovery after PostgreSQL came back"
                await asyncio.sleep(0.2)
            accepted = {s.text for s in sent if s.status == 201} | {b"after"}
            await receiver.wait_for(accepted, timeout=10)
        finally:
            await receiver.stop()
    finally:
        proxy.close()
