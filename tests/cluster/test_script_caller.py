"""A batch's script call on a connection of its own (`ScriptCaller`): a script Redis
does not know yet is loaded, and a call given up half-way never leaves its reply to be
read as the next call's."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

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
