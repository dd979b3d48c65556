"""Rate limits: token buckets per subscription, per VAPID key and per client address.

A rule such as `600/min` gives each key (a subscription, a key, an address) a bucket of
600 tokens refilled at 10 a second; each request takes one, and an empty bucket means
429 with `Retry-After` (the seconds until a token is back). `600/min burst 50` keeps the
rate but holds at most 50 tokens; `off` disables a rule.

The address rules count an IPv6 client by its /64 (`address_key`): one subscriber line
gets a whole /64, so counting single addresses would give an attacker 2**64 buckets.

`RateLimiter` is the seam: `MemoryRateLimiter` keeps the buckets of one node in a
bounded table that evicts the buckets whose loss forgives least (see `_evict`);
`RedisRateLimiter` keeps them in Redis so that the nodes of a cluster count together
(a key expires only once its bucket would be full again, so nothing is forgiven).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from tidings.service import forwarded
from tidings.service.cluster.batch import Batcher, ScriptCaller

log = logging.getLogger("tidings.limits")

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PERIODS |= {"h": 3600.0, "hour": 3600.0}
_RULE = re.compile(
    r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<period>[a-z]+)\s*(?:burst\s+(?P<burst>\d+))?\s*$"
)


class Limit(StrEnum):
    """What a rule counts; the value is the configuration name's suffix."""

    PUSH_SUBSCRIPTION = "push_subscription"  # pushes to one subscription
    PUSH_VAPID_KEY = "push_vapid_key"  # pushes signed by one application server key
    PUSH_ADDRESS = "push_address"  # pushes from one client address
    CONNECT_ADDRESS = "connect_address"  # new WebSocket connections from one address
    SUBSCRIBE_ADDRESS = "subscribe_address"  # new subscriptions from one address

    @property
    def per_address(self) -> bool:
        """True for the rules keyed by client address."""
        return self.value.endswith("_address")

    @property
    def description(self) -> str:
        """What the rule counts, in words (for error messages)."""
        what, per = self.value.split("_", 1)
        noun = {"push": "pushes", "connect": "connections", "subscribe": "subscriptions"}[what]
        return f"{noun} per {per.replace('_', ' ')}"


@dataclass(frozen=True, slots=True)
class Rule:
    """A token bucket's shape: `rate` tokens a second, at most `burst` held."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Rule | None:
        """`N/s`, `N/min`, `N/h`, optionally `burst B`; `off` (or `0`) is None."""
        if text.strip().lower() in ("off", "none", "0", ""):
            return None
        match = _RULE.match(text.lower())
        if match is None or match["period"] not in _PERIODS:
            raise ValueError(
                f"bad rate limit {text!r}: write N/s, N/min or N/h, optionally "
                "followed by 'burst B', or off"
            )
        count = float(match["count"])
        burst = float(match["burst"]) if match["burst"] else count
        if count <= 0 or burst < 1:
            raise ValueError(f"bad rate limit {text!r}: the rate and burst must be positive")
        return cls(count / _PERIODS[match["period"]], burst)


@dataclass(slots=True)
class TokenBucket:
    """A bucket's state: tokens held at `stamp` (monotonic seconds)."""

    tokens: float
    stamp: float

    def full_in(self, rule: Rule, now: float) -> float:
        """Seconds until the bucket is full again (0.0: forgetting it forgives nothing)."""
        held = self.tokens + (now - self.stamp) * rule.rate
        return max(0.0, (rule.burst - held) / rule.rate)

    def take(self, rule: Rule, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be."""
        self.tokens = min(rule.burst, self.tokens + (now - self.stamp) * rule.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rule.rate


class RateLimiter(Protocol):
    """Counts requests against the configured rules."""

    async def acquire(self, limit: Limit, key: str) -> float:
        """Take a token for `key` under `limit`: 0.0 when allowed, else seconds to wait."""
        ...

    def exempt(self, address: str) -> bool:
        """True for client addresses no address rule applies to."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`127.0.0.0/8,::1` as networks (addresses exempt from the address rules)."""
    return forwarded.parse_networks(text, "rate_limit_exempt")


def client_address(client: str) -> str:
    """The address part of a `Request.client` (`-` when unknown)."""
    return forwarded.peer_address(client)


IPV6_PREFIX = 64  # the address rules count an IPv6 client by its /64


def address_key(address: str) -> str:
    """The bucket key of a client address: IPv4 as is, IPv6 as its /64 network."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    network = ipaddress.IPv6Network((int(ip) >> 64 << 64, IPV6_PREFIX))
    return str(network)


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


EXEMPT_CACHE = 4096  # client addresses whose exemption is remembered (oldest forgotten)


class _Rules:
    """The rules of a limiter and the exempt networks (shared by both limiters)."""

    def __init__(
        self,
        rules: Mapping[Limit, Rule | None],
        exempt: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> None:
        self.rules = {limit: rule for limit, rule in rules.items() if rule is not None}
        self._exempt = list(exempt)
        self._exempt_cache: OrderedDict[str, bool] = OrderedDict()

    def exempt(self, address: str) -> bool:
        cached = self._exempt_cache.get(address)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            result = False
        else:
            result = any(ip in network for network in self._exempt)
        self._exempt_cache[address] = result
        if len(self._exempt_cache) > EXEMPT_CACHE:
            self._exempt_cache.popitem(last=False)
        return result


EVICTION_SCAN = 32  # oldest buckets looked at to find the one to evict


class MemoryRateLimiter(_Rules):
    """The buckets of one node, in a table of at most `max_buckets` entries.

    When the table is full a new key evicts a bucket that forgets nothing: among the
    `EVICTION_SCAN` least recently used, one already full again. If none is, the one
    that will be full soonest goes, and `forgiven` counts it. A plain LRU let an
    attacker drain a bucket, then churn through `max_buckets` fresh keys (one request
    each) to push it out and get it back full; now the churned buckets, each short of a
    single token, go before a drained one, so resetting a bucket would take
    `max_buckets` buckets each drained deeper than it.
    """

    def __init__(
        self,
        rules: Mapping[Limit, Rule | None],
        exempt: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        *,
        max_buckets: int = 100_000,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__(rules, exempt)
        self.max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[tuple[Limit, str], TokenBucket] = OrderedDict()
        self.forgiven = 0  # evicted buckets that were not full (their debt forgotten)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, limit: Limit, key: str) -> float:
        """`acquire` without the coroutine (the in-memory answer is immediate)."""
        rule = self.rules.get(limit)
        if rule is None:
            return 0.0
        now = self._clock()
        if limit.per_address:
            key = address_key(key)
        slot = (limit, key)
        bucket = self._buckets.get(slot)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._evict(now)
            bucket = self._buckets[slot] = TokenBucket(rule.burst, now)
        else:
            self._buckets.move_to_end(slot)
        return bucket.take(rule, now)

    def _evict(self, now: float) -> None:
        """Make room for one bucket, forgiving as little as possible (class docstring)."""
        victim: tuple[Limit, str] | None = None
        soonest = math.inf
        for scanned, (slot, bucket) in enumerate(self._buckets.items()):
            if scanned == EVICTION_SCAN:
                break
            wait = bucket.full_in(self.rules[slot[0]], now)
            if wait < soonest:
                victim, soonest = slot, wait
                if wait == 0.0:
                    break
        if victim is None:
            return
        if soonest > 0.0:
            self.forgiven += 1
        del self._buckets[victim]

    async def acquire(self, limit: Limit, key: str) -> float:
        return self.take(limit, key)

    async def close(self) -> None:
        self._buckets.clear()


# KEYS: bucket keys; ARGV: now (seconds), then rate per second, burst, expiry (seconds)
# and the tokens wanted of each key. Returns per key the tokens taken (as many as wanted
# and held, at least one if one is held) and, when none, the milliseconds until one is
# back. Several requests' buckets in one call (see `Batcher`), taken in that order.
_TAKE = """
local now = tonumber(ARGV[1])
local answers = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[4 * i - 2])
  local burst = tonumber(ARGV[4 * i - 1])
  local state = redis.call('HMGET', key, 't', 's')
  local tokens = tonumber(state[1]) or burst
  local stamp = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
  local taken, wait = 0, 0
  if tokens >= 1 then
    taken = math.min(tonumber(ARGV[4 * i + 1]), math.floor(tokens))
    tokens = tokens - taken
  else
    wait = math.ceil((1 - tokens) / rate * 1000)
  end
  redis.call('HSET', key, 't', tostring(tokens), 's', tostring(now))
  redis.call('EXPIRE', key, ARGV[4 * i])
  answers[2 * i - 1] = taken
  answers[2 * i] = wait
end
return answers
"""
TAKE_BATCH = 256  # buckets per script call at most (Redis runs a script alone)
# A node may take up to this many of a bucket's tokens at once and spend them for
# LEASE_LIFE seconds without asking Redis; the lease doubles from 1 only while leases are
# used up within their life (a busy bucket), and only for buckets of a burst of at least
# 32 times it; asked for again within the next life, it is as large as what was spent in
# the last one (a steady sender's rate: not back to 1 token because some were left). Unspent
# tokens of a lease are lost: a sender spread over several nodes may be refused up to
# that many tokens early, never served more than its rule allows.
MAX_LEASE = 16
LEASE_LIFE = 1.0
MAX_LEASES = 100_000  # buckets with a lease held at most (the oldest go first)


@dataclass(slots=True)
class _Lease:
    tokens: int  # taken from the bucket in Redis, not yet spent
    until: float  # monotonic seconds: unspent tokens are dropped then
    size: int  # tokens asked for by the last lease
    spent: int = 1  # tokens spent in its life, the one its request took included


class RedisRateLimiter(_Rules):
    """Buckets in Redis, shared by every node of a cluster: the buckets of the requests
    that come together are taken in one script call (one round trip for all of them),
    and a busy bucket's tokens are leased a few at a time (`MAX_LEASE`).

    If Redis cannot be reached the request is allowed (a limit must not take the
    service down with it) and a warning is logged at most once a minute.
    """

    def __init__(
        self,
        url: str,
        rules: Mapping[Limit, Rule | None],
        exempt: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        *,
        prefix: str = "tidings:",
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__(rules, exempt)
        import redis.asyncio as aioredis

        self._client: Any = aioredis.Redis.from_url(url, socket_timeout=1.0)
        self._script = ScriptCaller(self._client, _TAKE)  # the Batcher's, one call at a time
        self._prefix = prefix + "rl:"
        self._warned = 0.0
        self._clock = clock
        self._batch = Batcher(self._take, TAKE_BATCH)
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    async def _take(self, buckets: list[tuple[str, Rule, int]]) -> list[tuple[int, int]]:
        """Take tokens from each bucket, in order: (taken, milliseconds to wait) each."""
        args: list[Any] = [repr(time.time())]
        for _, rule, want in buckets:
            expiry = max(1, math.ceil(rule.burst / rule.rate)) + 1
            args += [repr(rule.rate), repr(rule.burst), expiry, want]
        answers = await self._script(keys=[key for key, _, _ in buckets], args=args)
        return [(int(answers[i]), int(answers[i + 1])) for i in range(0, len(answers), 2)]

    async def acquire(self, limit: Limit, key: str) -> float:
        rule = self.rules.get(limit)
        if rule is None:
            return 0.0
        if limit.per_address:
            key = address_key(key)
        bucket = f"{self._prefix}{limit.value}:{key}"
        now = self._clock()
        lease = self._leases.get(bucket)
        want = 1
        if lease is not None:
            cap = min(MAX_LEASE, max(1, int(rule.burst) // 32))
            if now < lease.until:
                if lease.tokens:
                    lease.tokens -= 1
                    lease.spent += 1
                    return 0.0
                want = min(lease.size * 2, cap)  # spent within its life: a busy bucket
            elif now < lease.until + LEASE_LIFE:
                want = min(lease.spent, cap)  # wanted again soon: what its last life used
        try:
            taken, wait_ms = await self._batch.call((bucket, rule, want))
        except Exception as exc:  # Redis down or slow: fail open
            if now - self._warned > 60:
                self._warned = now
                log.warning("rate limits not counted (Redis unavailable): %s", exc)
            return 0.0
        if not taken:
            return wait_ms / 1000.0
        self._lease(bucket, taken - 1, want)  # even empty: a second request soon doubles it
        return 0.0

    def _lease(self, bucket: str, tokens: int, size: int) -> None:
        now = self._clock()
        lease = self._leases.get(bucket)
        if lease is not None and now < lease.until:
            lease.tokens += tokens  # concurrent requests each took some: none is lost
            lease.size = max(lease.size, size)
            lease.spent += 1
        else:
            self._leases[bucket] = _Lease(tokens, now + LEASE_LIFE, size)
        self._leases.move_to_end(bucket)
        # An expired lease is kept one more life for its size (its tokens are not spent).
        oldest = self._leases[next(iter(self._leases))]
        while len(self._leases) > MAX_LEASES or oldest.until + LEASE_LIFE <= now:
            self._leases.popitem(last=False)
            oldest = self._leases[next(iter(self._leases))]

    def round_trips(self) -> int:
        """Script calls made so far (each took the buckets of one or more requests)."""
        return self._batch.batches

    async def close(self) -> None:
        await self._batch.close()
        await self._script.close()
        await self._client.aclose()


def rules_from(settings: Mapping[str, str]) -> dict[Limit, Rule | None]:
    """The rules of a configuration: `rate_<limit>` settings parsed."""
    return {limit: Rule.parse(settings[f"rate_{limit.value}"]) for limit in Limit}


def open_limiter(
    settings: Mapping[str, str],
    *,
    exempt: str,
    cluster: str | None,
    max_buckets: int,
) -> RateLimiter:
    """The limiter for a configuration: in Redis when clustered, else in memory."""
    rules = rules_from(settings)
    networks = parse_networks(exempt)
    if cluster and cluster.startswith(("redis://", "rediss://", "unix://")):
        from tidings.service.cluster.redis_bus import split_url

        url, prefix = split_url(cluster)
        return RedisRateLimiter(url, rules, networks, prefix=prefix)
    return MemoryRateLimiter(rules, networks, max_buckets=max_buckets)
