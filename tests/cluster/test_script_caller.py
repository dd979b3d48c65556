"""A batch's script call on a connection of its own (`ScriptCaller`): a script Redis
does not know yet is loaded, and a call given up half-way never leaves its reply to be
read as the next call's. PUBLISHes written together (`Publisher`) the same way."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from store.engines import redis_url, require_redis
from tidings.service.cluster.batch import ScriptCaller
from tidings.service.cluster.redis_bus import split_url


def client() -> aioredis.Redis:
    require_redis()
    return aioredis.Redis.from_url(split_url(redis_url())[0], socket_timeout=2.0)


def script() -> str:
    """ARGV[1] back, in a text no other test loaded (so Redis does not know it)."""
    return f"-- {secrets.token_hex(8)}\nreturn ARGV[1]"


async def test_a_script_redis_does_not_know_is_loaded_and_then_called_by_digest() -> None:
    redis = client()
    call = ScriptCaller(redis, script())
    assert await call([], ["first"]) == b"first"  # NOSCRIPT, then EVAL
    assert await call([], ["second"]) == b"second"  # EVALSHA now
    await call.close()
    await redis.aclose()


# ARGV[1] back after 20 ms of Redis's time (long enough to give up while it runs).
SLOW = """-- %s
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 20000
return ARGV[1]
"""


async def test_a_call_given_up_half_way_leaves_no_reply_for_the_next() -> None:
    redis = client()
    call = ScriptCaller(redis, SLOW % secrets.token_hex(8))
    assert await call([], ["warm"]) == b"warm"
    for n in range(3):
        abandoned = asyncio.ensure_future(call([], [f"abandoned{n}"]))
        await asyncio.sleep(0.005)  # sent; its reply comes in 15 ms
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert await call([], [f"next{n}"]) == f"next{n}".encode()
    await call.close()
    await redis.aclose()


async def test_a_failing_script_keeps_the_connection() -> None:
    redis = client()
    failing = ScriptCaller(redis, f"-- {secrets.token_hex(8)}\nreturn redis.call('NOPE')")
    with pytest.raises(ResponseError):
        await failing([], [])
    with pytest.raises(ResponseError):
        await failing([], [])
    await failing.close()
    await redis.aclose()


async def test_publishes_written_together_reach_their_channels_and_survive_a_kill() -> None:
    """`Publisher`: several PUBLISHes in one write, each read back; after its connection
    is killed (Redis restarted, a proxy dropped it) the next batch makes a new one."""
    from tidings.service.cluster.batch import Publisher

    redis = client()
    channels = [f"tidings-test-{secrets.token_hex(4)}:{n}" for n in range(2)]
    pubsub = redis.pubsub()
    await pubsub.subscribe(*channels)
    name = f"tidings-test-publisher-{secrets.token_hex(4)}"
    own = aioredis.Redis.from_url(split_url(redis_url())[0], client_name=name)
    publish = Publisher(own)  # its connections carry `name`: only they are killed below

    async def received(count: int) -> list[tuple[bytes, bytes]]:
        got: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 5
        while len(got) < count:
            assert time.monotonic() < deadline, f"received {got}"
            # None for a subscription's confirmation (or nothing within the second).
            item = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if item is not None:
                got.append((item["channel"], item["data"]))
        return got

    batch = [(channels[0], "a"), (channels[1], "b"), (channels[0], "c")]
    await publish(batch)
    assert await received(3) == [(c.encode(), p.encode()) for c, p in batch]
    killed = 0
    for entry in await redis.client_list():
        if entry.get("name") == name:
            await redis.client_kill_filter(_id=entry["id"])
            killed += 1
    assert killed == 1
    with contextlib.suppress(ConnectionError, OSError, RedisError):
        await publish([(channels[1], "maybe lost")])  # finds its connection gone
    await publish([(channels[1], "after")])
    got = await received(1)
    if got[0][1] == b"maybe lost":  # the kill came after that write
        got = await received(1)
    assert got == [(channels[1].encode(), b"after")]
    await publish.close()
    await own.aclose()
    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
    await redis.aclose()
