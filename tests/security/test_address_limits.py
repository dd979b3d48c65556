"""Address limits an attacker cannot dodge: IPv6 counted by /64, no reset by churning."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from support.ci import require, tcp_reachable
from support.service import running_service
from tidings.service.limits import (
    EVICTION_SCAN,
    Limit,
    MemoryRateLimiter,
    RedisRateLimiter,
    Rule,
    address_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("-", "-"),
    ],
)
def test_address_key(address: str, key: str) -> None:
    assert address_key(address) == key


def test_ipv6_addresses_of_one_64_share_a_bucket() -> None:
    limiter = MemoryRateLimiter({Limit.PUSH_ADDRESS: Rule(1 / 60, 2)}, clock=Clock())
    take = limiter.take
    assert take(Limit.PUSH_ADDRESS, "2001:db8:1:2::1") == 0.0
    assert take(Limit.PUSH_ADDRESS, "2001:db8:1:2:abcd::99") == 0.0
    assert take(Limit.PUSH_ADDRESS, "2001:db8:1:2:ffff:1:2:3") > 0  # the same /64: drained
    assert take(Limit.PUSH_ADDRESS, "2001:db8:1:3::1") == 0.0  # the next /64 is another
    assert take(Limit.PUSH_ADDRESS, "192.0.2.1") == 0.0
    assert take(Limit.PUSH_ADDRESS, "192.0.2.2") == 0.0  # IPv4 addresses stay apart


def test_other_rules_keep_their_keys() -> None:
    limiter = MemoryRateLimiter({Limit.PUSH_VAPID_KEY: Rule(1 / 60, 1)}, clock=Clock())
    assert limiter.take(Limit.PUSH_VAPID_KEY, "2001:db8::1") == 0.0
    assert limiter.take(Limit.PUSH_VAPID_KEY, "2001:db8::2") == 0.0  # not an address rule


@pytest.mark.parametrize("limit", [Limit.PUSH_ADDRESS, Limit.PUSH_SUBSCRIPTION])
def test_churning_keys_does_not_reset_a_drained_bucket(limit: Limit) -> None:
    clock = Clock()
    limiter = MemoryRateLimiter({limit: Rule(1 / 60, 5)}, max_buckets=100, clock=clock)
    victim = "2001:db8:aaaa:1::1" if limit.per_address else "victim"
    for _ in range(5):
        assert limiter.take(limit, victim) == 0.0
    assert limiter.take(limit, victim) > 0
    # The attacker sends one request from each of many other keys (other /64s).
    for n in range(1000):
        churn = f"2001:db8:bbbb:{n:x}::1" if limit.per_address else f"churn-{n}"
        assert limiter.take(limit, churn) == 0.0
        assert len(limiter) <= 100
    assert limiter.take(limit, victim) > 0  # still drained
    assert limiter.forgiven > 0  # the churned buckets were the ones forgotten


def test_full_buckets_go_first_and_nothing_is_forgiven() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(
        {Limit.PUSH_SUBSCRIPTION: Rule(1.0, 5)}, max_buckets=10, clock=clock
    )
    for _ in range(5):
        limiter.take(Limit.PUSH_SUBSCRIPTION, "drained")
    for n in range(9):
        limiter.take(Limit.PUSH_SUBSCRIPTION, f"old-{n}")
    clock.now += 2  # every bucket taken from once is full again; "drained" is not
    for n in range(EVICTION_SCAN):
        limiter.take(Limit.PUSH_SUBSCRIPTION, f"new-{n}")
        clock.now += 1
        assert len(limiter) <= 10
    assert limiter.take(Limit.PUSH_SUBSCRIPTION, "drained") == 0.0  # refilled meanwhile
    assert limiter.forgiven == 0


async def test_a_64_is_one_client_over_real_sockets(tmp_path: Path) -> None:
    """Clients named by a trusted proxy: two addresses of one /64 share a bucket."""
    settings = {"rate_limit_exempt": "", "rate_push_address": "2/min"}
    async with (
        running_service(tmp_path, trusted_proxies="127.0.0.1/32", **settings) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        statuses = []
        for address in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3", "2001:db8:1:3::1"]:
            answer = await client.post(
                running.url + "/push/nothing",
                headers={"ttl": "0", "x-forwarded-for": address},
            )
            statuses.append(answer.status_code)
    assert statuses == [404, 404, 429, 404]


@pytest.mark.redis
async def test_redis_counts_ipv6_by_64() -> None:
    require(tcp_reachable("127.0.0.1", 6379), "Redis on 127.0.0.1:6379")
    import redis.asyncio as aioredis

    prefix = f"tidings-test-{uuid.uuid4().hex[:8]}:"
    url = "redis://127.0.0.1:6379/0"
    limiter = RedisRateLimiter(url, {Limit.PUSH_ADDRESS: Rule(1 / 60, 1)}, prefix=prefix)
    try:
        assert await limiter.acquire(Limit.PUSH_ADDRESS, "2001:db8:1:2::1") == 0.0
        assert await limiter.acquire(Limit.PUSH_ADDRESS, "2001:db8:1:2::2") > 0
        assert await limiter.acquire(Limit.PUSH_ADDRESS, "2001:db8:1:3::2") == 0.0
    finally:
        await limiter.close()
        client = aioredis.Redis.from_url(url)
        keys = await client.keys(prefix + "*")
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_capability_deletes_and_monitors_count_against_the_address(
    tmp_path: Path,
) -> None:
    """Each DELETE of a message, subscription, set or receipt subscription costs a store
    write, found or not, and each monitor GET a store read: with a valid token of its own
    a client could repeat them without limit (only the message status GET was counted).
    They now count against `rate_push_address`, as pushes do. The pushes come from
    127.0.0.1, the repeated requests from 127.0.0.2."""
    settings = {"rate_limit_exempt": "", "rate_push_address": "4/min"}
    async with running_service(tmp_path, **settings) as running:
        async with httpx.AsyncClient(timeout=10) as client:
            subscribed = await client.post(running.url + "/subscribe", json={})
            endpoint = subscribed.links["urn:ietf:params:push"]["url"]
            pushed = await client.post(endpoint, headers={"ttl": "60", "prefer": "respond-async"})
            assert pushed.status_code == 202
        message = pushed.headers["location"]
        receipts = pushed.links["urn:ietf:params:push:receipt"]["url"]
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(timeout=10, transport=other) as client:
            statuses = [(await client.delete(message)).status_code for _ in range(3)]
            statuses.append((await client.get(receipts)).status_code)  # HTTP/1.1: 400
            statuses += [(await client.delete(receipts)).status_code for _ in range(2)]
            assert statuses == [204, 404, 404, 400, 429, 429], statuses
            refused = await client.delete(subscribed.headers["location"])
        assert refused.status_code == 429
        assert refused.json()["errno"] == 121
        assert "retry-after" in refused.headers


async def test_websocket_unregisters_count_against_the_address(tmp_path: Path) -> None:
    """An `unregister` is a store write whether its channel exists or not, and nothing
    limited them: 8 connections wrote 3,600 a second and tripled other user agents'
    delivery time. They count against `rate_push_address` like a DELETE of an RFC 8030
    subscription; past it the answer is status 429 and the connection stays."""
    settings = {"rate_limit_exempt": "", "rate_push_address": "2/min"}
    async with running_service(tmp_path, **settings) as running:
        agent = await running.agent()
        statuses = []
        for _ in range(3):
            channel = str(uuid.uuid4())
            await agent.send({"messageType": "unregister", "channelID": channel})
            answer = await agent.expect("unregister")
            assert answer["channelID"] == channel
            statuses.append(answer["status"])
        assert statuses == [200, 200, 429]
        await agent.send({"messageType": "ping"})
        assert await agent.receive() == {}
        await agent.close()
