"""Against a push service no one here wrote: the npm web-push-testing server decrypts."""

from __future__ import annotations

import pytest

from support.node import WebPushTestingServer
from tidings.sender import ResultKind, Sender, SendResult
from tidings.webpush import VapidKey

pytestmark = pytest.mark.node


@pytest.mark.parametrize("encoding", ["aes128gcm", "aesgcm"])
async def test_web_push_testing_decrypts_what_we_send(
    web_push_testing_server: WebPushTestingServer, vapid_key: VapidKey, encoding: str
) -> None:
    wpt = web_push_testing_server
    restricted = await wpt.subscribe(vapid_key.public_key_b64)
    open_sub = await wpt.subscribe(None)
    async with Sender(vapid_key, "mailto:ops@example.com") as sender:
        first = await sender.send(restricted, "héllo wörld", ttl=60, content_encoding=encoding)
        second = await sender.send(open_sub, '{"n": 2}', ttl=0, content_encoding=encoding)
    assert first.kind is ResultKind.ACCEPTED, first
    assert second.kind is ResultKind.ACCEPTED, second
    assert await wpt.wait_notifications(restricted["clientHash"]) == ["héllo wörld"]
    assert await wpt.wait_notifications(open_sub["clientHash"]) == ['{"n": 2}']


async def test_fan_out_and_gone_against_web_push_testing(
    web_push_testing_server: WebPushTestingServer, vapid_key: VapidKey
) -> None:
    wpt = web_push_testing_server
    subs = [await wpt.subscribe(vapid_key.public_key_b64) for _ in range(20)]
    await wpt.expire(subs[4]["clientHash"])
    gone: list[SendResult] = []
    async with Sender(vapid_key, "mailto:ops@example.com", on_gone=gone.append) as sender:
        summary = await sender.send_many(
            subs, lambda s: "for " + s.endpoint[-8:], ttl=60, concurrency=8
        )
    assert summary.accepted == 19 and summary.counts[ResultKind.GONE] == 1
    assert [r.subscription.endpoint for r in gone] == [subs[4]["endpoint"]]
    for i, sub in enumerate(subs):
        if i != 4:
            expected = ["for " + sub["endpoint"][-8:]]
            assert await wpt.wait_notifications(sub["clientHash"]) == expected


async def test_wrong_vapid_key_is_rejected_with_the_reason(
    web_push_testing_server: WebPushTestingServer, vapid_key: VapidKey
) -> None:
    sub = await web_push_testing_server.subscribe(vapid_key.public_key_b64)
    async with Sender(VapidKey.generate(), "mailto:ops@example.com") as sender:
        result = await sender.send(sub, "x", ttl=0)
    assert result.kind is ResultKind.REJECTED and result.status == 400
    assert "Crypto-Key" in (result.reason or "")
