"""Rate limits: token buckets (units), then 429 + Retry-After over real sockets."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from support.service import Registration, running_service
from tidings.service import limits
from tidings.service.config import ServiceConfig
from tidings.service.limits import (
    LEASE_LIFE,
    Limit,
    MemoryRateLimiter,
    RedisRateLimiter,
    Rule,
    client_address,
    parse_networks,
    retry_after,
)
from tidings.webpush import VapidKey, encrypt, sign_vapid

# Units --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [
        ("10/s", 10.0, 10.0),
        ("600/min", 10.0, 600.0),
        ("3600/h burst 5", 1.0, 5.0),
        ("2 / second", 2.0, 2.0),
        ("0.5/s burst 1", 0.5, 1.0),
    ],
)
def test_rule_parses(text: str, rate: float, burst: float) -> None:
    assert Rule.parse(text) == Rule(rate, burst)


@pytest.mark.parametrize("text", ["off", "OFF", "0", "none", ""])
def test_rule_off(text: str) -> None:
    assert Rule.parse(text) is None


@pytest.mark.parametrize("text", ["10", "10/day", "abc", "-1/s", "10/s burst", "10/s burst 0"])
def test_rule_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        Rule.parse(text)


def test_bad_settings_refused_when_configured() -> None:
    with pytest.raises(ValueError, match="rate limit"):
        ServiceConfig(rate_push_address="lots")
    with pytest.raises(ValueError, match="rate_limit_exempt"):
        ServiceConfig(rate_limit_exempt="10.0.0.0/8,not-a-network")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter({Limit.PUSH_SUBSCRIPTION: Rule(2.0, 5.0)}, clock=clock)
    assert [limiter.take(Limit.PUSH_SUBSCRIPTION, "a") for _ in range(5)] == [0.0] * 5
    assert limiter.take(Limit.PUSH_SUBSCRIPTION, "a") == pytest.approx(0.5)
    assert limiter.take(Limit.PUSH_SUBSCRIPTION, "b") == 0.0  # buckets are per key
    clock.now += 0.5
    assert limiter.take(Limit.PUSH_SUBSCRIPTION, "a") == 0.0
    assert limiter.take(Limit.PUSH_SUBSCRIPTION, "a") > 0
    clock.now += 3600
    assert [limiter.take(Limit.PUSH_SUBSCRIPTION, "a") for _ in range(5)] == [0.0] * 5
    assert limiter.take(Limit.PUSH_SUBSCRIPTION, "a") > 0  # never more than the burst


def test_a_rule_that_is_off_never_limits() -> None:
    limiter = MemoryRateLimiter({Limit.PUSH_ADDRESS: None})
    assert all(limiter.take(Limit.PUSH_ADDRESS, "x") == 0.0 for _ in range(10_000))
    assert len(limiter) == 0


def test_memory_is_bounded() -> None:
    limiter = MemoryRateLimiter({Limit.PUSH_ADDRESS: Rule(1.0, 1.0)}, max_buckets=100)
    for index in range(10_000):
        limiter.take(Limit.PUSH_ADDRESS, f"10.0.{index // 256}.{index % 256}")
    assert len(limiter) == 100
    # The most recently used buckets are the ones kept.
    assert limiter.take(Limit.PUSH_ADDRESS, "10.0.39.15") > 0


def test_exempt_networks_and_addresses() -> None:
    limiter = MemoryRateLimiter({}, parse_networks("127.0.0.0/8, ::1"))
    assert limiter.exempt("127.0.0.1")
    assert limiter.exempt("::1")
    assert not limiter.exempt("192.0.2.1")
    assert not limiter.exempt("-")
    assert client_address("192.0.2.1:5555") == "192.0.2.1"
    assert client_address("::1:5555") == "::1"
    assert client_address("-") == "-"
    assert retry_after(0.01) == "1"
    assert retry_after(2.2) == "3"


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def bucket_keys() -> AsyncIterator[Callable[..., Awaitable[list[bytes]]]]:
    """A key prefix of the test's own (`.prefix`); call it for the bucket keys made, each
    checked to expire; they are deleted after the test."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError):
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"tidings-test-{uuid.uuid4().hex[:8]}:"

    async def keys(max_ttl: int = 5) -> list[bytes]:
        found: list[bytes] = await client.keys(prefix + "*")
        ttls = [await client.ttl(key) for key in found]
        assert all(0 < ttl <= max_ttl for ttl in ttls)  # they expire
        return found

    keys.prefix = prefix  # type: ignore[attr-defined]
    yield keys
    leftover = await client.keys(prefix + "*")
    if leftover:
        await client.delete(*leftover)
    await client.aclose()


@pytest.mark.redis
async def test_redis_buckets_are_shared_by_nodes(bucket_keys: Any) -> None:
    rules = {Limit.PUSH_VAPID_KEY: Rule(1.0, 3.0)}
    nodes = [RedisRateLimiter(REDIS_URL, rules, prefix=bucket_keys.prefix) for _ in range(2)]
    answers = [await nodes[i % 2].acquire(Limit.PUSH_VAPID_KEY, "k") for i in range(4)]
    assert answers[:3] == [0.0, 0.0, 0.0]
    assert 0 < answers[3] <= 1.0
    assert await nodes[0].acquire(Limit.PUSH_VAPID_KEY, "other") == 0.0
    for node in nodes:
        await node.close()
    assert len(await bucket_keys()) == 2


@pytest.mark.redis
async def test_redis_buckets_of_concurrent_requests_are_taken_in_one_round_trip(
    bucket_keys: Any,
) -> None:
    rules = {Limit.PUSH_VAPID_KEY: Rule(1.0, 3.0), Limit.PUSH_SUBSCRIPTION: Rule(0.5, 2.0)}
    limiter = RedisRateLimiter(REDIS_URL, rules, prefix=bucket_keys.prefix)
    calls = [(Limit.PUSH_VAPID_KEY, "k")] * 5 + [(Limit.PUSH_SUBSCRIPTION, "s")] * 3
    calls += [(Limit.PUSH_VAPID_KEY, f"other{i}") for i in range(40)]
    answers = await asyncio.gather(*(limiter.acquire(limit, key) for limit, key in calls))
    # Each bucket still gives exactly its burst, in the order the requests came.
    assert answers[:5] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert answers[5:8] == [0.0, 0.0, 2.0]
    assert answers[8:] == [0.0] * 40
    assert limiter.round_trips() == 1  # 48 requests, one script call
    await limiter.close()
    assert len(await bucket_keys()) == 42


@pytest.mark.redis
async def test_a_busy_bucket_is_leased_and_never_gives_more_than_its_rule(
    bucket_keys: Any,
) -> None:
    rules = {Limit.PUSH_SUBSCRIPTION: Rule(0.001, 512.0)}  # 512 tokens, next to no refill
    now = [0.0]
    nodes = [
        RedisRateLimiter(REDIS_URL, rules, prefix=bucket_keys.prefix, clock=lambda: now[0])
        for _ in range(2)
    ]
    alone = [await nodes[0].acquire(Limit.PUSH_SUBSCRIPTION, "busy") for _ in range(100)]
    assert alone == [0.0] * 100
    trips = nodes[0].round_trips()
    assert trips <= 12  # leases of 1, 2, 4, 8, then 16 tokens
    now[0] = LEASE_LIFE  # what is left of the lease is dropped, not spent later
    assert await nodes[0].acquire(Limit.PUSH_SUBSCRIPTION, "busy") == 0.0
    assert nodes[0].round_trips() == trips + 1
    # Both nodes on one bucket until it is empty: each token is given once at most, and
    # at most a lease's worth (15 each) is left unspent on a node when the other runs dry.
    allowed = 101
    for i in range(1000):
        if await nodes[i % 2].acquire(Limit.PUSH_SUBSCRIPTION, "busy") == 0.0:
            allowed += 1
    assert 512 - 3 * 15 <= allowed <= 512  # and the lease dropped above
    assert await nodes[1].acquire(Limit.PUSH_SUBSCRIPTION, "other") == 0.0  # its own bucket
    for node in nodes:
        await node.close()
    assert len(await bucket_keys(max_ttl=512_002)) == 2  # once full again


def clocked_limiter(bucket_keys: Any, limit: Limit, now: list[float]) -> RedisRateLimiter:
    """A limiter whose clock is `now[0]`, with a bucket of 512 tokens and next to no
    refill for `limit`."""
    return RedisRateLimiter(
        REDIS_URL, {limit: Rule(0.001, 512.0)}, prefix=bucket_keys.prefix, clock=lambda: now[0]
    )


@pytest.mark.redis
async def test_a_lease_spent_and_asked_for_again_soon_keeps_its_size(bucket_keys: Any) -> None:
    now = [0.0]
    limiter = clocked_limiter(bucket_keys, Limit.PUSH_VAPID_KEY, now)
    for _ in range(31):  # leases of 1, 2, 4, 8 and 16 tokens, all spent
        assert await limiter.acquire(Limit.PUSH_VAPID_KEY, "k") == 0.0
    assert limiter.round_trips() == 5
    now[0] = 1.5 * LEASE_LIFE  # expired, but spent: the next lease is 16 tokens again
    for _ in range(16):
        assert await limiter.acquire(Limit.PUSH_VAPID_KEY, "k") == 0.0
    assert limiter.round_trips() == 6
    now[0] = 4 * LEASE_LIFE  # a quiet bucket starts again at one token
    for _ in range(2):
        assert await limiter.acquire(Limit.PUSH_VAPID_KEY, "k") == 0.0
    assert limiter.round_trips() == 8
    await limiter.close()
    assert len(await bucket_keys(max_ttl=512_002)) == 1


@pytest.mark.redis
async def test_a_lease_left_unspent_is_followed_by_one_of_what_was_spent(
    bucket_keys: Any,
) -> None:
    """A steady sender (some tokens left when a lease ends) keeps leases of its rate
    instead of starting again at one token: fewer round trips, no more tokens."""
    now = [0.0]
    limiter = clocked_limiter(bucket_keys, Limit.PUSH_SUBSCRIPTION, now)
    for _ in range(4):  # leases of 1, 2, then 4 tokens: 4 spent, 3 left
        assert await limiter.acquire(Limit.PUSH_SUBSCRIPTION, "s") == 0.0
    assert limiter.round_trips() == 3
    now[0] = 1.2 * LEASE_LIFE  # expired with 3 tokens unspent (dropped), wanted again
    for _ in range(4):  # one lease of the 4 spent in the last life
        assert await limiter.acquire(Limit.PUSH_SUBSCRIPTION, "s") == 0.0
    assert limiter.round_trips() == 4
    await limiter.close()
    assert len(await bucket_keys(max_ttl=512_002)) == 1


async def test_leases_held_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_LEASES", 3)
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", {Limit.PUSH_ADDRESS: Rule(1.0, 1.0)})
    for n in range(5):
        limiter._lease(f"bucket{n}", 4, 8)
    assert list(limiter._leases) == ["bucket2", "bucket3", "bucket4"]  # the oldest went
    await limiter.close()


async def test_redis_down_fails_open() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", {Limit.PUSH_ADDRESS: Rule(1.0, 1.0)})
    assert [await limiter.acquire(Limit.PUSH_ADDRESS, "a") for _ in range(3)] == [0.0] * 3
    await limiter.close()


# Over the wire --------------------------------------------------------------------------


def body_for(registration: Registration, text: str = "hi") -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def push(
    client: httpx.AsyncClient, registration: Registration, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        registration.endpoint,
        content=body_for(registration),
        headers={"ttl": "60", "content-encoding": "aes128gcm", **(headers or {})},
    )


def assert_limited(response: httpx.Response, what: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    document = response.json()
    assert document["errno"] == 121
    assert what in document["message"]


async def test_pushes_per_subscription(tmp_path: Path) -> None:
    async with running_service(tmp_path, rate_push_subscription="3/min") as running:
        agent = await running.agent()
        first, second = await agent.register(), await agent.register()
        async with httpx.AsyncClient() as client:
            assert [(await push(client, first)).status_code for _ in range(3)] == [201] * 3
            response = await push(client, first)
            assert_limited(response, "pushes per subscription")
            assert int(response.headers["retry-after"]) == 20  # 3/min: a token in 20 s
            assert (await push(client, second)).status_code == 201  # its own bucket
        await agent.close()


async def test_pushes_per_vapid_key(tmp_path: Path) -> None:
    key, other = VapidKey.generate(), VapidKey.generate()
    async with running_service(tmp_path, rate_push_vapid_key="2/min") as running:
        agent = await running.agent()
        registrations = [await agent.register() for _ in range(3)]

        def signed(vapid: VapidKey) -> dict[str, str]:
            return {"authorization": sign_vapid(vapid, running.url, "mailto:t@x.org").authorization}

        async with httpx.AsyncClient() as client:
            statuses = [(await push(client, r, signed(key))).status_code for r in registrations]
            assert statuses[:2] == [201, 201]
            assert_limited(await push(client, registrations[2], signed(key)), "per vapid key")
            assert (await push(client, registrations[2], signed(other))).status_code == 201
            assert (await push(client, registrations[2])).status_code == 201  # unsigned
        await agent.close()


async def test_pushes_per_address(tmp_path: Path) -> None:
    settings = {"rate_push_address": "2/min", "rate_limit_exempt": ""}
    async with running_service(tmp_path, **settings) as running:
        agent = await running.agent()
        registration = await agent.register()
        async with httpx.AsyncClient() as client:
            assert [(await push(client, registration)).status_code for _ in range(2)] == [201] * 2
            assert_limited(await push(client, registration), "pushes per address")
            # Garbage counts too: a flood of bad tokens is a flood.
            bad = await client.post(running.url + "/push/nonsense", headers={"ttl": "1"})
            assert bad.status_code == 429
        await agent.close()


async def test_loopback_is_exempt_by_default(tmp_path: Path) -> None:
    async with running_service(tmp_path, rate_push_address="1/min") as running:
        agent = await running.agent()
        registration = await agent.register()
        async with httpx.AsyncClient() as client:
            assert [(await push(client, registration)).status_code for _ in range(3)] == [201] * 3
        await agent.close()


def handshake() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )


async def test_websocket_connections_per_address(tmp_path: Path) -> None:
    settings = {"rate_connect_address": "2/min", "rate_limit_exempt": ""}
    async with running_service(tmp_path, **settings) as running:
        first, second = await running.agent(), await running.agent()
        reader, writer = await asyncio.open_connection("127.0.0.1", running.config.port)
        writer.write(handshake())
        answer = await asyncio.wait_for(reader.read(4096), 5)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429"), answer
        assert b"retry-after: " in head.lower()
        assert b"connections per address" in body
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        writer.close()
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(running.ws_url, open_timeout=5)
        # The connections already made are not touched.
        await first.send("{}")  # the protocol's ping
        assert await first.receive() == {}
        await first.close()
        await second.close()


async def test_subscriptions_per_address(tmp_path: Path) -> None:
    settings = {"rate_subscribe_address": "2/min", "rate_limit_exempt": ""}
    async with running_service(tmp_path, **settings) as running:
        agent = await running.agent()
        await agent.register()
        async with httpx.AsyncClient() as client:
            assert (await client.post(running.url + "/subscribe")).status_code == 201
            response = await client.post(running.url + "/subscribe")
            assert_limited(response, "subscriptions per address")
        channel_id = str(uuid.uuid4())
        await agent.send({"messageType": "register", "channelID": channel_id})
        reply = await agent.expect("register")
        assert reply["status"] == 429
        assert "pushEndpoint" not in reply
        await agent.close()
