"""The measurements behind `tidings bench`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.sender import RetryPolicy, Sender
from tidings.webpush import Subscription, VapidKey, public_key_bytes

SUBJECT = "mailto:tidings-bench@localhost"


def websocket_url(service_url: str) -> str:
    """The WebSocket push URL of a service given by its http(s) or ws(s) URL."""
    parts = urlsplit(service_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path or "/", "", ""))


@dataclass
class RateResult:
    """One fixed-rate run: what was sent, what came back, and how fast."""

    rate: float
    sent: int
    delivered: int
    latencies_ms: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else float("nan")
        return statistics.quantiles(self.latencies_ms, n=100)[int(q * 100) - 1]


@dataclass
class BenchReport:
    """Everything `tidings bench` measured."""

    agents: int
    throughput_seconds: float
    accepted: int
    rejected: int
    delivered: int
    rates: list[RateResult]

    @property
    def accepted_per_second(self) -> float:
        return self.accepted / self.throughput_seconds if self.throughput_seconds else 0.0


class _Agent:
    """One WebSocket user agent with one subscription; records arrival times."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = uuid.uuid4().bytes
        self.subscription: Subscription | None = None
        self.pending: deque[float] = deque()  # send times, in order, of messages in flight
        self.latencies: list[float] | None = None
        self.delivered = 0
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, url: str, application_server_key: str) -> None:
        self._ws = await websockets.connect(url, compression=None, open_timeout=15)
        await self._ws.send(json.dumps({"messageType": "hello", "use_webpush": True}))
        await self._ws.recv()
        channel = str(uuid.uuid4())
        await self._ws.send(
            json.dumps(
                {"messageType": "register", "channelID": channel, "key": application_server_key}
            )
        )
        reply = json.loads(await self._ws.recv())
        if reply.get("status") != 200:
            raise RuntimeError(f"the service refused to subscribe: {reply}")
        self.subscription = Subscription(
            reply["pushEndpoint"], public_key_bytes(self.key.public_key()), self.auth
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self._ws:
                message = json.loads(text)
                if message.get("messageType") != "notification":
                    continue
                now = time.perf_counter()
                self.delivered += 1
                if self.pending:
                    sent = self.pending.popleft()
                    if self.latencies is not None:
                        self.latencies.append((now - sent) * 1000)
                update = {
                    "channelID": message["channelID"],
                    "version": message["version"],
                    "code": 100,
                }
                await self._ws.send(json.dumps({"messageType": "ack", "updates": [update]}))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()


async def run_bench(
    service_url: str,
    *,
    agents: int = 50,
    duration: float = 5.0,
    rates: tuple[float, ...] = (100.0, 1000.0),
    concurrency: int = 64,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure throughput, then latency at each rate, against `service_url`."""
    say = progress or (lambda _text: None)
    key = VapidKey.generate()
    url = websocket_url(service_url)
    say(f"connecting {agents} user agents to {url}")
    pool = [_Agent() for _ in range(agents)]
    try:
        await asyncio.gather(*(agent.connect(url, key.public_key_b64) for agent in pool))
        # No retries: a 429 (the service's rate limits) is counted as refused, not waited on.
        async with Sender(
            key,
            SUBJECT,
            max_connections_per_origin=concurrency,
            retry=RetryPolicy(max_attempts=1),
        ) as sender:
            say(f"throughput: pushing as fast as possible for {duration:g} s")
            accepted, rejected, elapsed = await _throughput(sender, pool, duration, concurrency)
            await asyncio.sleep(0.5)
            delivered = sum(agent.delivered for agent in pool)
            results = []
            for rate in rates:
                say(f"latency: {rate:g} pushes/s for {duration:g} s")
                results.append(await _at_rate(sender, pool, rate, duration))
        return BenchReport(agents, elapsed, accepted, rejected, delivered, results)
    finally:
        await asyncio.gather(*(agent.close() for agent in pool), return_exceptions=True)


async def _throughput(
    sender: Sender, pool: list[_Agent], duration: float, concurrency: int
) -> tuple[int, int, float]:
    accepted = rejected = 0
    deadline = time.perf_counter() + duration
    counter = 0

    async def worker() -> None:
        nonlocal accepted, rejected, counter
        while time.perf_counter() < deadline:
            agent = pool[counter % len(pool)]
            counter += 1
            assert agent.subscription is not None
            agent.pending.append(time.perf_counter())
            result = await sender.send(agent.subscription, b"throughput", ttl=60)
            if result.kind == "accepted":
                accepted += 1
            else:
                rejected += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted, rejected, time.perf_counter() - started


async def _at_rate(sender: Sender, pool: list[_Agent], rate: float, duration: float) -> RateResult:
    latencies: list[float] = []
    for agent in pool:
        agent.pending.clear()
        agent.latencies = latencies
    before = sum(agent.delivered for agent in pool)
    interval = 1.0 / rate
    total = int(rate * duration)
    tasks: list[asyncio.Task[Any]] = []
    start = time.perf_counter()
    for index in range(total):
        target = start + index * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        agent = pool[index % len(pool)]
        assert agent.subscription is not None
        agent.pending.append(time.perf_counter())
        tasks.append(asyncio.ensure_future(sender.send(agent.subscription, b"latency", ttl=60)))
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    for agent in pool:
        agent.latencies = None
    delivered = sum(agent.delivered for agent in pool) - before
    return RateResult(rate, total, delivered, latencies)
