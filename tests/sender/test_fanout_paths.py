"""The fan-out's fast paths: batches built ahead of sending, and deadlines kept without a
timer per request on kept-alive HTTP/1.1 connections."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sender.helpers import Keys, ScriptedService
from tidings.sender import ResultKind, RetryPolicy, Sender, SendResult
from tidings.sender.fanout import BATCH
from tidings.sender.transport import FrozenHeaders
from tidings.webpush import Subscription, VapidKey, b64url_encode


def sender(key: VapidKey, **options: object) -> Sender:
    options.setdefault("retry", RetryPolicy.none())
    return Sender(key, "mailto:ops@example.com", **options)  # type: ignore[arg-type]


def subscribers(
    service: ScriptedService, prefix: str, count: int
) -> tuple[list[Keys], list[dict[str, Any]]]:
    """`count` user agents' keys and their subscriptions at /push/<prefix><i>."""
    keys = [Keys.generate() for _ in range(count)]
    return keys, [k.subscription(service.endpoint(f"{prefix}{i}")) for i, k in enumerate(keys)]


def point_off_the_curve(service: ScriptedService) -> dict[str, Any]:
    """A well-formed subscription at /push/off whose p256dh is 0x04 || 64 zeros."""
    subscription = Keys.generate().subscription(service.endpoint("off"))
    subscription["keys"]["p256dh"] = b64url_encode(b"\x04" + bytes(64))
    return subscription


async def test_batches_keep_every_message_its_own_and_invalid_ones_in_place(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    count = 2 * BATCH + 17
    keys, found = subscribers(push_service, "b", count)
    subs: list[object] = list(found)
    for at in (0, BATCH - 1, BATCH, count):  # unusable ones at the edges of batches
        subs.insert(at, {"endpoint": push_service.endpoint("bad"), "keys": {"p256dh": "x"}})
    push_service.delay = 0.005
    results: list[SendResult] = []
    async with sender(vapid_key) as s:
        summary = await s.send_many(
            subs, "batched", ttl=60, concurrency=5, on_result=results.append
        )
    assert summary.total == count + 4 == len(results)
    assert summary.accepted == count and summary.counts[ResultKind.INVALID] == 4
    assert push_service.max_in_flight <= 5
    assert sorted(id(r.original) for r in results) == sorted(id(item) for item in subs)
    invalid = [r for r in results if r.kind is ResultKind.INVALID]
    assert all(r.original["endpoint"].endswith("/bad") for r in invalid)  # type: ignore[index]
    assert push_service.plaintexts(keys, "b") == [[b"batched"]] * len(keys)


async def test_a_kept_alive_connection_that_stops_answering_times_out(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = Keys.generate()
    async with sender(vapid_key) as s:
        assert (await s.send(keys.subscription(push_service.endpoint("w")), "x", ttl=0)).ok
        push_service.delay = 1.0
        started = time.monotonic()
        late = await s.send(keys.subscription(push_service.endpoint("t")), "x", ttl=0, timeout=0.2)
        waited = time.monotonic() - started
        push_service.delay = 0.0
        again = await s.send(keys.subscription(push_service.endpoint("n")), "x", ttl=0)
    assert late.kind is ResultKind.FAILED and "no answer within 0.2 s" in (late.reason or "")
    assert 0.19 <= waited < 0.8
    assert again.ok  # the timed-out connection was dropped, a new one answers


async def test_deadlines_of_requests_in_flight_expire_each_at_its_own_time(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = [Keys.generate() for _ in range(3)]
    async with sender(vapid_key) as s:
        push_service.delay = 0.05  # three connections open at once, then kept alive
        warm = await s.send_many(
            [k.subscription(push_service.endpoint(f"k{i}")) for i, k in enumerate(keys)],
            "x",
            ttl=0,
            concurrency=3,
        )
        assert warm.all_accepted and len(push_service.peers) == 3
        push_service.delay = 0.5
        started = time.monotonic()

        async def timed(i: int, timeout: float) -> tuple[SendResult, float]:
            sub = keys[i].subscription(push_service.endpoint(f"d{i}"))
            result = await s.send(sub, "x", ttl=0, timeout=timeout)
            return result, time.monotonic() - started

        (a, at_a), (b, at_b), (c, at_c) = await asyncio.gather(
            timed(0, 0.3), timed(1, 2.0), timed(2, 0.15)
        )
    assert c.kind is ResultKind.FAILED and 0.14 <= at_c < 0.3
    assert a.kind is ResultKind.FAILED and 0.29 <= at_a < 0.5
    assert b.ok and 0.45 <= at_b < 1.5


async def test_when_the_workers_are_behind_the_loop_encrypts_batches_itself(
    push_service: ScriptedService, vapid_key: VapidKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks wait in a busy pool; the rest is built here meanwhile, none is lost or doubled."""
    from tidings.sender import fanout

    monkeypatch.setattr(fanout, "CHUNK", 4)
    released = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(released.wait, 10)  # the only "worker" is busy until released
    keys, subs = subscribers(push_service, "s", 40)
    async with sender(vapid_key) as s:
        s._pool, s.encrypt_workers = pool, 1  # type: ignore[assignment]
        released_at: list[float] = []

        def release() -> None:
            released_at.append(time.monotonic())
            released.set()

        asyncio.get_running_loop().call_later(0.5, release)
        summary = await s.send_many(subs, "starved", ttl=60, concurrency=6)
        s._pool = None
    pool.shutdown()
    assert summary.accepted == 40
    early = [r for r in push_service.requests if r.at < released_at[0]]
    assert len(early) >= 40 - 3 * 4  # all but the chunks held by the pool went out before
    assert push_service.plaintexts(keys, "s") == [[b"starved"]] * len(keys)


async def test_a_point_off_the_curve_is_refused_alike_with_and_without_workers(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    """With workers the point is first decoded in the worker; the result must not differ."""
    keys, subs = subscribers(push_service, "c", 5)
    off_curve = point_off_the_curve(push_service)
    subs.insert(2, off_curve)
    reasons = []
    for workers in (0, 1):
        async with sender(vapid_key, encrypt_workers=workers) as s:
            summary = await s.send_many(subs, "curve", ttl=60)
        assert summary.accepted == 5 and summary.counts[ResultKind.INVALID] == 1
        (refused,) = summary.problems
        assert refused.original is off_curve and refused.attempts == 0
        reasons.append(refused.reason)
    assert reasons[0] == reasons[1]
    assert reasons[0] == "unusable subscription: subscription keys.p256dh is not a P-256 public key"
    assert push_service.seen("off") == []
    assert all(got == b"curve" for each in push_service.plaintexts(keys, "c") for got in each)


async def test_results_from_workers_carry_a_usable_subscription(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys, subs = subscribers(push_service, "u", 3)
    results: list[SendResult] = []
    async with sender(vapid_key, encrypt_workers=1) as s:
        await s.send_many(subs, "u", ttl=60, on_result=results.append)
    assert len(results) == 3
    for result in results:
        i = int(result.subscription.endpoint.rsplit("u", 1)[1])
        assert result.subscription.p256dh == keys[i].p256dh
        assert result.subscription.public_key.public_numbers() == (
            keys[i].private_key.public_key().public_numbers()
        )


async def test_an_async_source_keeps_every_worker_busy_to_the_end(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    """Workers waiting for the source while another takes its last batch must not leave."""
    _, subs = subscribers(push_service, "a", 2 * BATCH)

    async def slowly() -> AsyncIterator[dict[str, Any]]:
        for sub in subs:
            await asyncio.sleep(0.001)
            yield sub

    push_service.delay = 0.05
    async with sender(vapid_key) as s:
        summary = await s.send_many(slowly(), "x", ttl=0, concurrency=8)
    assert summary.accepted == 2 * BATCH
    # 128 answers of 50 ms, 8 at a time: about 0.8 s, not a last batch sent one by one.
    assert summary.elapsed < 2.0


async def test_with_workers_a_personalised_payload_sees_only_checked_subscriptions(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys, subs = subscribers(push_service, "p", 3)
    off_curve = point_off_the_curve(push_service)
    seen: list[str] = []

    def personal(sub: Subscription) -> str:
        seen.append(sub.endpoint)
        return "hi " + sub.endpoint.rsplit("/", 1)[1]

    async with sender(vapid_key, encrypt_workers=1) as s:
        summary = await s.send_many([*subs, off_curve], personal, ttl=60)
    assert summary.accepted == 3 and summary.counts[ResultKind.INVALID] == 1
    assert sorted(seen) == sorted(sub["endpoint"] for sub in subs)
    assert push_service.plaintexts(keys, "p") == [[f"hi p{i}".encode()] for i in range(len(keys))]


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_fan_out_sends_the_headers_send_would_with_a_fresh_salt_each(
    push_service: ScriptedService, vapid_key: VapidKey, workers: int
) -> None:
    """The fan-out shares one set of headers per origin and draws a batch's salts at once
    (in this process or in a worker's chunk): each request still carries what `send`
    builds, and its own salt."""
    count = BATCH + 3
    keys, subs = subscribers(push_service, "h", count)
    async with sender(vapid_key, headers={"X-App": "1"}, encrypt_workers=workers) as s:
        expected = s.build(subs[0], "same", ttl=60, urgency="high", topic="news").headers
        summary = await s.send_many(subs, "same", ttl=60, urgency="high", topic="news")
    assert summary.accepted == count
    wire_names = {name.lower() for name in expected} | {"host", "content-length"}
    salts = set()
    for i in range(count):
        (seen,) = push_service.seen(f"h{i}")
        assert {name.lower() for name in seen.headers} == wire_names
        for name, value in expected.items():
            assert seen.headers[name] == value
        salts.add(seen.body[:16])
    assert len(salts) == count
    assert push_service.plaintexts(keys, "h") == [[b"same"]] * count


def test_frozen_headers_refuse_changes_and_copy_into_plain_ones() -> None:
    headers = FrozenHeaders({"TTL": "60", "Urgency": "low"})
    for change in (
        lambda: headers.__setitem__("TTL", "0"),
        lambda: headers.__delitem__("TTL"),
        lambda: headers.update({"TTL": "0"}),
        lambda: headers.setdefault("Topic", "t"),
        lambda: headers.pop("TTL"),
        lambda: headers.popitem(),
        headers.clear,
    ):
        with pytest.raises(TypeError):
            change()
    assert headers == {"TTL": "60", "Urgency": "low"}
    copied = copy.copy(headers)
    assert type(copied) is FrozenHeaders and copied == headers
    plain = dict(headers)
    plain["TTL"] = "0"
    assert headers["TTL"] == "60"


async def test_a_receipt_request_adds_its_headers_to_a_copy_of_shared_ones(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    """A receipt request adds headers per request: to a copy, never to shared ones."""
    _, subs = subscribers(push_service, "r", 1)
    async with sender(vapid_key) as s:
        request = s.build(subs[0], "x", ttl=60)
        request.headers = FrozenHeaders(request.headers)
        result = await s.deliver_with_receipt(request)
    assert result.ok
    assert type(request.headers) is dict and "respond-async" in request.headers["Prefer"]


async def test_without_on_result_every_answer_is_counted_and_gone_and_problems_kept(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    # (Accepted answers are only counted on this path: no result object is made for them.)
    _, subs = subscribers(push_service, "c", 2 * BATCH)
    push_service.script("c1", (429, {"Retry-After": "0"}, b""))  # then the default 201
    push_service.script("c2", (410, {}, b""))
    push_service.script("c3", (400, {}, b"bad request"))
    push_service.script("c4", (503, {}, b""), (503, {}, b""))  # past the one retry allowed
    gone: list[SendResult] = []
    async with sender(
        vapid_key,
        retry=RetryPolicy(max_attempts=2, base_delay=0.0, jitter=False),
        on_gone=gone.append,
    ) as s:
        summary = await s.send_many(subs, "counted", ttl=60, concurrency=7)
    assert summary.total == 2 * BATCH
    assert summary.accepted == 2 * BATCH - 3
    assert [r.original for r in summary.gone] == [subs[2]] and gone == summary.gone
    assert gone[0].status == 410 and gone[0].subscription.endpoint == subs[2]["endpoint"]
    problems = {r.original["endpoint"]: r for r in summary.problems}  # type: ignore[index]
    assert problems.keys() == {subs[3]["endpoint"], subs[4]["endpoint"]}
    assert problems[subs[3]["endpoint"]].kind is ResultKind.REJECTED
    assert problems[subs[3]["endpoint"]].reason == "bad request"
    assert problems[subs[4]["endpoint"]].kind is ResultKind.RETRY_LATER
    assert problems[subs[4]["endpoint"]].attempts == 2
    assert len(push_service.seen("c1")) == 2 and len(push_service.seen("c0")) == 1
