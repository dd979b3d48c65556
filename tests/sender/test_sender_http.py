"""Sender against local scripted push services: kinds, retries, gone, keep-alive, fan-out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sender.helpers import Keys, ScriptedService, error_body
from support.ci import free_port
from tidings.sender import ResultKind, RetryPolicy, Sender, SendResult
from tidings.webpush import PayloadTooLarge, Subscription, VapidKey, verify_vapid

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def sender(key: VapidKey, **options: object) -> Sender:
    options.setdefault("retry", FAST)
    return Sender(key, "mailto:ops@example.com", **options)  # type: ignore[arg-type]


async def test_accepted_with_location_ttl_and_a_body_http_ece_decrypts(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = Keys.generate()
    push_service.script("a", (201, {"Location": "/m/xyz", "TTL": "30"}, b""))
    async with sender(vapid_key) as s:
        result = await s.send(keys.subscription(push_service.endpoint("a")), "hi", ttl=60)
    assert result.kind is ResultKind.ACCEPTED and result.ok
    assert (result.status, result.location, result.ttl) == (201, "/m/xyz", 30)
    assert result.attempts == 1 and result.http_version == "HTTP/1.1"
    seen = push_service.seen("a")[0]
    assert keys.decrypt(seen.body, seen.headers) == b"hi"
    assert seen.headers["TTL"] == "60"
    assert seen.headers["Content-Type"] == "application/octet-stream"
    verify_vapid(seen.headers["Authorization"], audience=push_service.url)


async def test_429_with_retry_after_is_retried_after_the_delay(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    push_service.script("r", (429, {"Retry-After": "1"}, b""))
    async with sender(vapid_key) as s:
        result = await s.send(Keys.generate().subscription(push_service.endpoint("r")), "x", ttl=0)
    assert result.kind is ResultKind.ACCEPTED and result.attempts == 2
    first, second = push_service.seen("r")
    assert second.at - first.at >= 1.0


async def test_429_with_an_http_date_retry_after(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    from email.utils import formatdate

    push_service.script("d", (429, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}, b""))
    async with sender(vapid_key) as s:
        result = await s.send(Keys.generate().subscription(push_service.endpoint("d")), "x", ttl=0)
    assert result.kind is ResultKind.ACCEPTED
    first, second = push_service.seen("d")
    assert second.at - first.at >= 0.9  # the date has one-second resolution


async def test_always_429_ends_as_retry_later(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    push_service.script("busy", *[(429, {"Retry-After": "0"}, b"slow down")] * 5)
    async with sender(vapid_key) as s:
        result = await s.send(
            Keys.generate().subscription(push_service.endpoint("busy")), "x", ttl=0
        )
    assert result.kind is ResultKind.RETRY_LATER
    assert result.status == 429 and result.attempts == 3 and result.retry_after == 0
    assert len(push_service.seen("busy")) == 3
    assert result.reason == "slow down"


async def test_long_retry_after_is_handed_to_the_application(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    push_service.script("later", (503, {"Retry-After": "3600"}, b""))
    async with sender(vapid_key) as s:
        result = await s.send(
            Keys.generate().subscription(push_service.endpoint("later")), "x", ttl=0
        )
    assert result.kind is ResultKind.RETRY_LATER and result.retry_after == 3600
    assert len(push_service.seen("later")) == 1


async def test_5xx_is_retried(push_service: ScriptedService, vapid_key: VapidKey) -> None:
    push_service.script("flaky", (500, {}, b""), (503, {}, b""))
    async with sender(vapid_key) as s:
        result = await s.send(
            Keys.generate().subscription(push_service.endpoint("flaky")), "x", ttl=0
        )
    assert result.kind is ResultKind.ACCEPTED and result.attempts == 3


@pytest.mark.parametrize("status", [400, 401, 403, 413])
async def test_4xx_is_rejected_with_the_reason_and_not_retried(
    push_service: ScriptedService, vapid_key: VapidKey, status: int
) -> None:
    body = error_body(status, 109, "Unauthorized", "VAPID key does not match")
    push_service.script("bad", (status, {"Content-Type": "application/json"}, body))
    async with sender(vapid_key) as s:
        result = await s.send(
            Keys.generate().subscription(push_service.endpoint("bad")), "x", ttl=0
        )
    assert result.kind is ResultKind.REJECTED and result.status == status
    assert result.error is not None and result.error.errno == 109
    assert result.reason == "Unauthorized: VAPID key does not match (errno 109)"
    assert len(push_service.seen("bad")) == 1


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_reaches_on_gone(
    push_service: ScriptedService, vapid_key: VapidKey, status: int
) -> None:
    push_service.script("gone", (status, {}, b""))
    gone: list[SendResult] = []
    sub = Keys.generate().subscription(push_service.endpoint("gone"))
    async with sender(vapid_key, on_gone=gone.append) as s:
        result = await s.send(sub, "x", ttl=0)
    assert result.kind is ResultKind.GONE and gone == [result]
    assert result.original is sub and len(push_service.seen("gone")) == 1


async def test_async_on_gone(push_service: ScriptedService, vapid_key: VapidKey) -> None:
    push_service.script("g", (410, {}, b""))
    deleted: list[str] = []

    async def forget(result: SendResult) -> None:
        await asyncio.sleep(0)
        deleted.append(result.subscription.endpoint)

    async with sender(vapid_key, on_gone=forget) as s:
        await s.send(Keys.generate().subscription(push_service.endpoint("g")), "x", ttl=0)
    assert deleted == [push_service.endpoint("g")]


async def test_chunked_error_bodies_are_read(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    push_service.chunked = True
    body = error_body(400, 111, "Bad Request", "TTL header is missing or invalid")
    push_service.script("c", (400, {}, body))
    async with sender(vapid_key) as s:
        first = await s.send(Keys.generate().subscription(push_service.endpoint("c")), "x", ttl=0)
        second = await s.send(Keys.generate().subscription(push_service.endpoint("c")), "x", ttl=0)
    assert first.reason == "Bad Request: TTL header is missing or invalid (errno 111)"
    assert second.kind is ResultKind.ACCEPTED  # the connection stayed usable


async def test_connection_refused_ends_as_failed(vapid_key: VapidKey) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/push/x"
    async with sender(vapid_key) as s:
        result = await s.send(Keys.generate().subscription(endpoint), "x", ttl=0)
    assert result.kind is ResultKind.FAILED and result.status is None
    assert result.attempts == 3 and "cannot connect" in (result.reason or "")


async def test_a_slow_service_times_out_and_fails(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    push_service.delay = 1.0
    async with sender(vapid_key, retry=RetryPolicy.none()) as s:
        result = await s.send(
            Keys.generate().subscription(push_service.endpoint("t")), "x", ttl=0, timeout=0.2
        )
    assert result.kind is ResultKind.FAILED and "no answer within 0.2 s" in (result.reason or "")


async def test_one_vapid_signature_and_one_connection_for_sequential_sends(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    async with sender(vapid_key) as s:
        for i in range(20):
            sub = Keys.generate().subscription(push_service.endpoint(f"k{i}"))
            assert (await s.send(sub, "x", ttl=0)).ok
        assert s.vapid is not None and s.vapid.signatures == 1
    assert len(push_service.peers) == 1
    tokens = {r.headers["Authorization"] for r in push_service.requests}
    assert len(tokens) == 1


async def test_oversized_payload_is_refused_before_any_request(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    sub = Keys.generate().subscription(push_service.endpoint("big"))
    async with sender(vapid_key) as s:
        with pytest.raises(PayloadTooLarge):
            await s.send(sub, b"x" * 3994, ttl=0)
        with pytest.raises(PayloadTooLarge):
            await s.send_many([sub], b"x" * 3994, ttl=0)
    assert push_service.requests == []


async def test_sender_needs_a_subject_with_a_key(vapid_key: VapidKey) -> None:
    with pytest.raises(ValueError, match="subject is required"):
        Sender(vapid_key)
    with pytest.raises(ValueError, match="transport"):
        Sender(vapid_key, "mailto:a@b.c", transport="curl")  # type: ignore[arg-type]


async def test_send_many_counts_calls_back_and_bounds_concurrency(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    push_service.delay = 0.02
    keys = [Keys.generate() for _ in range(60)]
    subs: list[object] = [
        k.subscription(push_service.endpoint(f"s{i}")) for i, k in enumerate(keys)
    ]
    for i in range(0, 60, 10):
        push_service.script(f"s{i}", (410, {}, b""))
    push_service.script("s5", (400, {}, error_body(400, 1, "Bad", "no")))
    subs.append({"endpoint": push_service.endpoint("broken"), "keys": {"p256dh": "x", "auth": "y"}})
    seen: list[SendResult] = []
    gone: list[SendResult] = []
    async with sender(vapid_key, on_gone=gone.append) as s:
        summary = await s.send_many(subs, "news", ttl=60, concurrency=7, on_result=seen.append)
    assert summary.total == 61 == len(seen)
    assert summary.counts[ResultKind.ACCEPTED] == 53
    assert summary.counts[ResultKind.GONE] == 6 == len(summary.gone) == len(gone)
    assert summary.counts[ResultKind.REJECTED] == 1
    assert summary.counts[ResultKind.INVALID] == 1
    assert {r.kind for r in summary.problems} == {ResultKind.REJECTED, ResultKind.INVALID}
    assert push_service.max_in_flight <= 7
    assert summary.messages_per_second > 0 and not summary.all_accepted
    assert [each[0] for each in push_service.plaintexts(keys, "s")] == [b"news"] * len(keys)


async def test_personalised_payloads_and_async_sources(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = [Keys.generate() for _ in range(12)]

    async def source() -> AsyncIterator[dict]:
        for i, k in enumerate(keys):
            await asyncio.sleep(0)
            yield k.subscription(push_service.endpoint(f"p{i}"))

    def personal(sub: Subscription) -> str:
        return "hello " + sub.endpoint.rsplit("/", 1)[1]

    async with sender(vapid_key) as s:
        summary = await s.send_many(source(), personal, ttl=60, concurrency=4)
    assert summary.all_accepted and summary.total == 12
    assert [each[0] for each in push_service.plaintexts(keys, "p")] == [
        f"hello p{i}".encode() for i in range(len(keys))
    ]


async def test_personalised_payload_too_large_is_one_invalid_result(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    subs = [Keys.generate().subscription(push_service.endpoint(f"q{i}")) for i in range(3)]

    def payload(sub: Subscription) -> bytes:
        return b"x" * (5000 if sub.endpoint.endswith("q1") else 10)

    async with sender(vapid_key) as s:
        summary = await s.send_many(subs, payload, ttl=0)
    assert summary.accepted == 2 and summary.counts[ResultKind.INVALID] == 1
    assert "3993" in (summary.problems[0].reason or "")


async def test_send_many_with_an_encryption_worker_process(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = [Keys.generate() for _ in range(150)]
    subs = [k.subscription(push_service.endpoint(f"w{i}")) for i, k in enumerate(keys)]
    subs.append({"endpoint": push_service.endpoint("bad"), "keys": {"p256dh": "", "auth": ""}})
    async with sender(vapid_key, encrypt_workers=1) as s:
        summary = await s.send_many(subs, "from a worker", ttl=60, concurrency=20)
    assert summary.accepted == 150 and summary.counts[ResultKind.INVALID] == 1
    firsts = [each[0] for each in push_service.plaintexts(keys, "w")]
    assert firsts == [b"from a worker"] * len(keys)


async def test_httpx_transport_gives_the_same_results(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = Keys.generate()
    push_service.script("h", (410, {}, b""))
    async with sender(vapid_key, transport="httpx") as s:
        ok = await s.send(keys.subscription(push_service.endpoint("ok")), "x", ttl=0)
        gone = await s.send(keys.subscription(push_service.endpoint("h")), "x", ttl=0)
    assert ok.kind is ResultKind.ACCEPTED and gone.kind is ResultKind.GONE
    request = push_service.seen("ok")[0]
    assert keys.decrypt(request.body, request.headers) == b"x"
