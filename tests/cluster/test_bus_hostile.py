"""Hostile bytes on the Redis bus, and a killed bus connection: the node keeps delivering.

Whoever can publish on the cluster's Redis can put any payload in front of a node's
listener. Each bad one must be logged and dropped; the listener must live on (or come
back, with /health saying "degraded" while it is away) and `stop()` must end cleanly.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from cluster.conftest import Cluster, close_quietly, connect, push
from store.engines import RedisProcess
from support.ci import require
from support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


def hostile_corpus(uaid: str, channel_id: str) -> list[bytes]:
    """Payloads a node must refuse, each aimed at the real user agent where it has one."""
    valid = {
        "t": "m",
        "id": "m1",
        "ua": uaid,
        "ch": channel_id,
        "b": "aGVsbG8=",
        "ttl": 600,
        "c": time.time(),
        "e": time.time() + 600,
        "u": "normal",
        "tp": None,
        "h": {"encoding": "aes128gcm"},
        "r": None,
    }

    def variant(**changes: object) -> bytes:
        return json.dumps({**valid, **changes}).encode()

    missing_id = {k: v for k, v in valid.items() if k != "id"}
    return [
        variant(ttl=float("inf")),  # json.dumps writes Infinity
        variant(ttl=float("nan")),  # NaN
        b'{"t":"m","ttl":1e400}',  # a number that parses to infinity
        variant(ttl="600"),  # wrong type
        variant(ttl=-5),  # out of range
        variant(ttl=True),  # a bool is not a TTL
        variant(c=-1.0, e=float("-inf")),  # times out of range
        variant(b="!!! not base64 !!!"),
        variant(b="QQ"),  # truncated base64
        variant(ua="x" * 100_000),  # huge id
        b'{"t":"m","b":"' + b"A" * (3 << 20) + b'"}',  # over the message size limit
        variant(t="x\nFORGED-LOG-LINE \x1b[31m"),  # unknown kind, with a forged line
        json.dumps({"t": None}).encode(),  # no kind
        variant(h={"encoding": 1}),  # a header value of the wrong type
        variant(h=["encoding"]),  # headers not an object
        variant(h={f"x{i}": "v" for i in range(1000)}),  # too many headers
        variant(u="urgent"),  # unknown urgency
        variant(ch={"$ne": 1}),  # an object where an id goes
        variant(ua="../../etc/passwd"),  # not an id
        variant(extra="field"),  # unknown field
        json.dumps(missing_id).encode(),  # a missing field
        variant(ttl=600)[:40],  # truncated JSON
        b"\xff\xfe\x00{not utf-8}",  # not UTF-8
        b"[" * 100_000,  # nesting deep enough to exhaust recursion
        b"[1, 2, 3]",  # not an object
        b"42",
        json.dumps({"t": "p", "ua": ["a"]}).encode(),  # a poke with a list for an id
        json.dumps({"t": "all", "more": 1}).encode(),  # a poke-all with extra fields
    ]


def bad_message_lines(node: ServiceProcess) -> list[str]:
    lines = node.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if "dropped a bad bus message" in line]


async def health(node: ServiceProcess) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(node.url + "/health")


async def test_hostile_bus_messages_are_dropped_and_delivery_goes_on(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    agent = await connect(a)
    base, _, prefix = cluster.cluster_url.partition("?prefix=")
    publisher = aioredis.from_url(base)
    try:
        registration = await agent.register()
        assert agent.uaid is not None
        corpus = hostile_corpus(agent.uaid, registration.channel_id)
        assert len(corpus) >= 10
        for payload in corpus:
            # Exactly one receiver: node a's listener, on the real channel.
            assert await publisher.publish(f"{prefix}node:a", payload) == 1
        for payload in corpus[:3]:
            assert await publisher.publish(f"{prefix}all", payload) == 2
        deadline = time.monotonic() + 30
        while len(bad_message_lines(a)) < len(corpus) + 3:
            assert time.monotonic() < deadline, a.log_tail()
            await asyncio.sleep(0.1)
        # A real message still crosses from b to the agent on a, live.
        assert (await push(b, registration, "after the storm")).status_code == 201
        assert (await agent.next_notification(timeout=10)).plaintext == b"after the storm"
        assert (await health(a)).status_code == 200
        await agent.no_frame(0.3)  # none of the hostile messages reached the agent
    finally:
        await close_quietly(agent)
        await publisher.aclose()
    log = a.log_path.read_text(errors="replace")
    assert not any(line.startswith("FORGED-LOG-LINE") for line in log.splitlines())
    assert "\x1b" not in log
    assert all(len(line) < 1000 for line in bad_message_lines(a))  # reasons, not payloads
    assert a.stop() == 0  # stop() after all that ends cleanly
    assert "Traceback" not in a.log_path.read_text(errors="replace")


async def test_a_killed_bus_connection_degrades_health_then_recovers(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A private Redis: changing its ACL must not disturb anyone else's tests.
    require(RedisProcess.available(), "redis-server")
    redis_server = RedisProcess(tmp_path / "redis")
    redis_server.start()
    cluster.cluster_url = redis_server.url
    admin = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    try:
        a, b = await cluster.start("a", "b")
        agent = await connect(a)
        try:
            registration = await agent.register()
            assert (await health(a)).json()["status"] == "ok"

            prefix = cluster.cluster_url.partition("?prefix=")[2]

            async def listeners() -> int:
                counts = dict(await admin.pubsub_numsub(f"{prefix}node:a"))
                return int(counts[f"{prefix}node:a".encode()])

            assert await listeners() == 1
            # Forbid node a's channel (so the node cannot subscribe again at once and
            # health must say so meanwhile), then kill the listeners' connections.
            await admin.execute_command(
                "ACL", "SETUSER", "default", "resetchannels", f"&{prefix}node:b", f"&{prefix}all"
            )
            await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            deadline = time.monotonic() + 30
            while (response := await health(a)).status_code != 503:
                assert time.monotonic() < deadline, "health never reported the lost listener"
                await asyncio.sleep(0.05)
            assert response.json()["status"] == "degraded"
            assert response.json()["cluster"] == "degraded"
            await admin.execute_command("ACL", "SETUSER", "default", "allchannels")
            while (response := await health(a)).status_code != 200:
                assert time.monotonic() < deadline, a.log_tail()
                await asyncio.sleep(0.1)
            assert response.json()["status"] == "ok"
            assert await listeners() == 1
            # Live delivery across nodes is back.
            assert (await push(b, registration, "after the kill")).status_code == 201
            assert (await agent.next_notification(timeout=10)).plaintext == b"after the kill"
        finally:
            await close_quietly(agent)
        assert a.stop() == 0
    finally:
        await admin.aclose()
        redis_server.kill()
