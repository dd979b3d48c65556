"""RFC 8030 conformance of the push service, over real HTTP/2 connections.

Each test names the section and requirement it checks; docs/rfc8030.md maps every
MUST and SHOULD that applies to a push service to its test.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from rfc8030.conftest import Rfc8030
from tidings.http2 import H2Client, PushedResponse
from tidings.webpush import VapidKey, b64url_encode, decrypt, encrypt, public_key_bytes, sign_vapid
from tidings.webpush.links import link_target

REL_PUSH = "urn:ietf:params:push"
REL_SET = "urn:ietf:params:push:set"
REL_RECEIPT = "urn:ietf:params:push:receipt"


def path_of(url: str) -> str:
    return urlsplit(url).path


class UA:
    """A user agent's view of one subscription: its URLs and its keys."""

    def __init__(self, response_headers: dict[str, str]) -> None:
        self.subscription = response_headers["location"]
        links = response_headers["link"]
        push = link_target(links, REL_PUSH)
        subscription_set = link_target(links, REL_SET)
        assert push and subscription_set, links
        self.push, self.set = push, subscription_set
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def encrypt(self, text: str) -> bytes:
        return encrypt(text.encode(), public_key_bytes(self.key.public_key()), self.auth)

    def decrypt(self, pushed: PushedResponse) -> str:
        return decrypt(pushed.body, self.key, self.auth).decode()


async def subscribe(
    client: H2Client, *, vapid: str | None = None, set_url: str | None = None
) -> UA:
    headers: dict[str, str] = {}
    body = b""
    if vapid is not None:
        headers["content-type"] = "application/webpush-options+json"
        body = json.dumps({"vapid": vapid}).encode()
    if set_url is not None:
        headers["link"] = f'<{set_url}>; rel="{REL_SET}"'
    response = await client.request("POST", "/subscribe", headers, body)
    assert response.status == 201, response
    return UA(response.headers)


async def push(
    client: H2Client, ua: UA, text: str | None, **headers: str
) -> tuple[int, dict[str, str]]:
    """An application server's push (over the same kind of HTTP/2 connection)."""
    body = ua.encrypt(text) if text is not None else b""
    request = {"ttl": "60", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if body:
        request["content-encoding"] = "aes128gcm"
    response = await client.request("POST", path_of(ua.push), request, body)
    return response.status, response.headers


async def drain(client: H2Client, url: str, **headers: str) -> list[PushedResponse]:
    """GET with Prefer: wait=0: everything pending, then 204 (section 6.1)."""
    stream = await client.open_stream(
        "GET", path_of(url), {"prefer": "wait=0", **{k: v for k, v in headers.items()}}
    )
    response = await asyncio.wait_for(stream.response, 10)
    assert response.status == 204, response
    pushed: list[PushedResponse] = []
    while not stream.pushes.empty():
        pushed.append(stream.pushes.get_nowait())
    return pushed


# Section 4: subscribing -----------------------------------------------------------------


async def test_4_subscribe_answers_201_with_location_and_links(rfc: Rfc8030) -> None:
    """§4: 201, Location = push message subscription, Link rel push and rel push:set."""
    async with await rfc.connect() as client:
        response = await client.request("POST", "/subscribe")
        assert response.status == 201
        assert response.headers["location"].startswith(rfc.service.url + "/s/")
        links = response.headers["link"]
        assert (link_target(links, REL_PUSH) or "").startswith(rfc.service.url + "/push/")
        assert (link_target(links, REL_SET) or "").startswith(rfc.service.url + "/set/")


async def test_4_capability_urls_are_unguessable(h2c: Rfc8030) -> None:
    """§8.2: URLs carry at least 120 bits of entropy; two subscriptions share nothing."""
    async with await h2c.connect() as client:
        one, two = await subscribe(client), await subscribe(client)
    for a, b in ((one.push, two.push), (one.subscription, two.subscription)):
        token_a, token_b = a.rsplit("/", 1)[1], b.rsplit("/", 1)[1]
        assert len(token_a) * 6 >= 120 * 2 and token_a != token_b


async def test_4_1_subscribe_into_an_existing_set(h2c: Rfc8030) -> None:
    """§4.1: a Link rel push:set in the subscribe request adds to that set."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        assert second.set == first.set and second.push != first.push
        assert (await push(client, first, "one"))[0] == 201
        assert (await push(client, second, "two"))[0] == 201
        owners = {first.push: first, second.push: second}
        texts = sorted(
            owners[link_target(p.headers["link"], REL_PUSH) or ""].decrypt(p)
            for p in await drain(client, first.set)
        )
        assert texts == ["one", "two"]


async def test_4_1_invalid_set_is_400(h2c: Rfc8030) -> None:
    """§4.1: a push service MUST return 400 for a set it does not recognise."""
    async with await h2c.connect() as client:
        bogus = h2c.service.url + "/set/AAAA" + "B" * 40
        response = await client.request(
            "POST", "/subscribe", {"link": f'<{bogus}>; rel="{REL_SET}"'}
        )
        assert response.status == 400
        assert json.loads(response.body)["errno"] == 116


async def test_rfc8292_restricted_subscription_needs_vapid(h2c: Rfc8030) -> None:
    """RFC 8292 §4.2: a subscription made with a vapid key refuses pushes without it."""
    key = VapidKey.generate()
    async with await h2c.connect() as client:
        ua = await subscribe(client, vapid=key.public_key_b64)
        status, _ = await push(client, ua, "no auth")
        assert status == 401
        auth = sign_vapid(key, ua.push, "mailto:ops@example.com").authorization
        status, _ = await push(client, ua, "signed", authorization=auth)
        assert status == 201
        other = sign_vapid(VapidKey.generate(), ua.push, "mailto:x@example.com").authorization
        assert (await push(client, ua, "other", authorization=other))[0] == 403


# Section 5: requesting delivery ----------------------------------------------------------


async def test_5_push_is_201_with_location_and_ttl(h2c: Rfc8030) -> None:
    """§5: 201 Created with Location of the push message resource; §5.2 TTL echoed."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        status, headers = await push(client, ua, "hello", ttl="3600")
        assert status == 201
        assert headers["location"].startswith(h2c.service.url + "/m/")
        assert headers["ttl"] == "3600"


async def test_5_2_ttl_is_required(h2c: Rfc8030) -> None:
    """§5.2: a push without TTL is a 400."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        response = await client.request(
            "POST", path_of(ua.push), {"content-encoding": "aes128gcm"}, ua.encrypt("x")
        )
        assert response.status == 400


async def test_5_2_ttl_zero_only_to_a_connected_user_agent(h2c: Rfc8030) -> None:
    """§5.2: TTL 0 is delivered if the user agent is connected now, else dropped."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, "nobody listening", ttl="0"))[0] == 201
        assert await drain(client, ua.subscription) == []
        monitor = await client.open_stream("GET", path_of(ua.subscription))
        await asyncio.sleep(0.1)
        assert (await push(client, ua, "live", ttl="0"))[0] == 201
        pushed = await monitor.next_push(5)
        assert ua.decrypt(pushed) == "live"
        client.cancel(monitor)


async def test_5_2_expired_message_is_never_delivered(h2c: Rfc8030) -> None:
    """§5.2: a message whose TTL has passed is not delivered."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "short", ttl="1")
        await push(client, ua, "long", ttl="60")
        await asyncio.sleep(1.3)
        assert [ua.decrypt(p) for p in await drain(client, ua.subscription)] == ["long"]


async def test_5_3_urgency_is_validated(h2c: Rfc8030) -> None:
    """§5.3: Urgency is one of four values."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, "x", urgency="urgent"))[0] == 400
        assert (await push(client, ua, "x", urgency="high"))[0] == 201


async def test_5_3_user_agent_urgency_filter_holds_back_lower_messages(h2c: Rfc8030) -> None:
    """§5.3: a UA asking for `high` gets only high; the rest waits until it asks again."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        for text, urgency in (("low", "low"), ("call", "high"), ("normal", "normal")):
            assert (await push(client, ua, text, urgency=urgency))[0] == 201
        high_only = await drain(client, ua.subscription, urgency="high")
        assert [ua.decrypt(p) for p in high_only] == ["call"]
        for pushed in high_only:
            assert (await client.request("DELETE", pushed.path)).status == 204
        rest = await drain(client, ua.subscription)
        assert [ua.decrypt(p) for p in rest] == ["low", "normal"]


async def test_5_4_topic_replaces_a_stored_message(h2c: Rfc8030) -> None:
    """§5.4: a message with the Topic of a stored one replaces it."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "first", topic="status")
        await push(client, ua, "unrelated")
        await push(client, ua, "second", topic="status")
        texts = [ua.decrypt(p) for p in await drain(client, ua.subscription)]
        assert texts == ["unrelated", "second"]


async def test_5_4_topic_is_validated(h2c: Rfc8030) -> None:
    """§5.4: at most 32 characters of the base64url alphabet."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, "x", topic="a" * 33))[0] == 400
        assert (await push(client, ua, "x", topic="not ok!"))[0] == 400


async def test_5_3_and_5_4_not_forwarded_to_the_user_agent(h2c: Rfc8030) -> None:
    """§5.3/§5.4 and RFC 8292: Urgency, Topic, TTL and VAPID never reach the UA."""
    key = VapidKey.generate()
    async with await h2c.connect() as client:
        ua = await subscribe(client, vapid=key.public_key_b64)
        auth = sign_vapid(key, ua.push, "mailto:ops@example.com").authorization
        await push(client, ua, "x", topic="t1", urgency="high", authorization=auth)
        (pushed,) = await drain(client, ua.subscription)
    forbidden = {"ttl", "topic", "urgency", "authorization", "crypto-key"}
    assert not forbidden & set(pushed.headers), pushed.headers


async def test_5_3_cancel_an_undelivered_message(h2c: Rfc8030) -> None:
    """§5.3 (delete): the application server DELETEs the push message resource."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "never mind")
        assert (await client.request("DELETE", path_of(headers["location"]))).status == 204
        assert (await client.request("DELETE", path_of(headers["location"]))).status == 404
        assert await drain(client, ua.subscription) == []


# Section 6: receiving -------------------------------------------------------------------


async def test_6_monitor_receives_pushes_with_the_message_resource(rfc: Rfc8030) -> None:
    """§6.1/6.2: messages arrive as PUSH_PROMISEs of GET <push message resource>."""
    async with await rfc.connect() as client:
        ua = await subscribe(client)
        monitor = await client.open_stream("GET", path_of(ua.subscription))
        _, headers = await push(client, ua, "Incoming call ✓")
        pushed = await monitor.next_push(5)
        assert pushed.path == path_of(headers["location"])
        assert pushed.request_headers[":method"] == "GET"
        assert pushed.status == 200
        assert ua.decrypt(pushed) == "Incoming call ✓"
        assert pushed.headers["content-encoding"] == "aes128gcm"
        assert pushed.headers["cache-control"] == "private"
        assert email.utils.parsedate_to_datetime(pushed.headers["last-modified"])
        assert not monitor.response.done()  # the GET itself is never answered while open
        client.cancel(monitor)


async def test_6_2_unacknowledged_messages_are_pushed_again(h2c: Rfc8030) -> None:
    """§6.2: acknowledge with DELETE; an unacknowledged message is delivered again."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "one")
        await push(client, ua, "two")
        first = await drain(client, ua.subscription)
        assert [ua.decrypt(p) for p in first] == ["one", "two"]
        assert (await client.request("DELETE", first[0].path)).status == 204
        again = await drain(client, ua.subscription)
        assert [ua.decrypt(p) for p in again] == ["two"]


async def test_6_set_monitor_links_each_message_to_its_push_resource(h2c: Rfc8030) -> None:
    """§6.1: a set delivers every subscription's messages; each names its push resource."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        await push(client, first, "for first")
        await push(client, second, "for second")
        by_push = {first.push: first, second.push: second}
        texts = {}
        for pushed in await drain(client, first.set):
            owner = by_push[link_target(pushed.headers["link"], REL_PUSH) or ""]
            texts[owner.push] = owner.decrypt(pushed)
        assert texts == {first.push: "for first", second.push: "for second"}


async def test_6_monitoring_needs_http2(h2c: Rfc8030) -> None:
    """§6: over HTTP/1.1 a monitor cannot work: a clear 400, not a hang."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
    async with httpx.AsyncClient() as http1:
        response = await http1.get(ua.subscription, timeout=5)
    assert response.status_code == 400
    assert response.json()["errno"] == 117


async def test_7_3_unsubscribe_then_pushes_are_refused(h2c: Rfc8030) -> None:
    """§7.3 (DELETE subscription): later pushes get 404/410; monitoring gets 404."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        other = await subscribe(client, set_url=ua.set)
        assert (await client.request("DELETE", path_of(ua.subscription))).status == 204
        assert (await push(client, ua, "late"))[0] in (404, 410)
        assert (
            await client.request("GET", path_of(ua.subscription), {"prefer": "wait=0"})
        ).status == 404
        assert (await push(client, other, "still here"))[0] == 201
        assert (await client.request("DELETE", path_of(ua.set))).status == 204
        assert (await push(client, other, "gone too"))[0] in (404, 410)


# Receipts (sections 5.1, 6.2, 6.3) ----------------------------------------------------------


async def _receipt_monitor(client: H2Client, receipt_url: str) -> Any:
    stream = await client.open_stream("GET", path_of(receipt_url))
    await asyncio.sleep(0.05)
    return stream


async def test_5_1_respond_async_gets_202_and_a_receipt_subscription(rfc: Rfc8030) -> None:
    """§5.1: Prefer: respond-async → 202 with Location and Link rel push:receipt."""
    async with await rfc.connect() as client:
        ua = await subscribe(client)
        status, headers = await push(client, ua, "call", prefer="respond-async")
        assert status == 202
        assert headers["location"].startswith(rfc.service.url + "/m/")
        receipt = link_target(headers["link"], REL_RECEIPT)
        assert receipt and receipt.startswith(rfc.service.url + "/r/")
        # Without Prefer the answer stays 201 (the 202/201 distinction).
        assert (await push(client, ua, "plain"))[0] == 201


async def test_6_3_receipt_204_after_acknowledgement(rfc: Rfc8030) -> None:
    """§6.3: when the UA acknowledges, the app server's receipt GET gets a pushed 204."""
    async with await rfc.connect() as app, await rfc.connect() as device:
        ua = await subscribe(device)
        _, headers = await push(app, ua, "ring", prefer="respond-async")
        receipts = await _receipt_monitor(app, link_target(headers["link"], REL_RECEIPT) or "")
        (delivered,) = await drain(device, ua.subscription)
        assert (await device.request("DELETE", delivered.path)).status == 204
        receipt = await receipts.next_push(5)
        assert receipt.path == path_of(headers["location"])
        assert receipt.status == 204
        app.cancel(receipts)


async def test_5_1_receipt_subscription_is_reused_when_linked(h2c: Rfc8030) -> None:
    """§5.1: a later push naming the receipt subscription aggregates receipts on it."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, first = await push(client, ua, "a", prefer="respond-async")
        receipt_url = link_target(first["link"], REL_RECEIPT) or ""
        status, second = await push(
            client, ua, "b", prefer="respond-async", link=f'<{receipt_url}>; rel="{REL_RECEIPT}"'
        )
        assert status == 202
        assert link_target(second["link"], REL_RECEIPT) == receipt_url
        receipts = await _receipt_monitor(client, receipt_url)
        for pushed in await drain(client, ua.subscription):
            await client.request("DELETE", pushed.path)
        got = {(await receipts.next_push(5)).path for _ in range(2)}
        assert got == {path_of(first["location"]), path_of(second["location"])}


async def test_5_1_invalid_receipt_subscription_is_400(h2c: Rfc8030) -> None:
    """§5.1: a receipt subscription the service does not know is a 400."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        bogus = h2c.service.url + "/r/" + "A" * 60
        status, _ = await push(
            client, ua, "x", prefer="respond-async", link=f'<{bogus}>; rel="{REL_RECEIPT}"'
        )
        assert status == 400


async def test_6_3_receipt_410_when_the_ttl_runs_out(h2c: Rfc8030) -> None:
    """§6.3: the service gave up (TTL expired undelivered): a pushed 410."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "too late", ttl="1", prefer="respond-async")
        receipts = await _receipt_monitor(client, link_target(headers["link"], REL_RECEIPT) or "")
        receipt = await receipts.next_push(5)
        assert receipt.status == 410
        assert receipt.path == path_of(headers["location"])


async def test_6_3_replaced_message_gets_no_receipt(h2c: Rfc8030) -> None:
    """A message replaced through its Topic was never delivered: no receipt for it."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, old = await push(client, ua, "old", topic="t", prefer="respond-async")
        receipt_url = link_target(old["link"], REL_RECEIPT) or ""
        link = f'<{receipt_url}>; rel="{REL_RECEIPT}"'
        _, new = await push(client, ua, "new", topic="t", prefer="respond-async", link=link)
        receipts = await _receipt_monitor(client, receipt_url)
        (pushed,) = await drain(client, ua.subscription)
        await client.request("DELETE", pushed.path)
        receipt = await receipts.next_push(5)
        assert receipt.path == path_of(new["location"])
        with pytest.raises(TimeoutError):
            await receipts.next_push(0.5)


async def test_receipts_from_websocket_acks(h2c: Rfc8030) -> None:
    """Receipts behave the same when the user agent speaks Firefox's WebSocket protocol."""
    agent = await h2c.service.agent()
    registration = await agent.register()
    info = registration.subscription_info()
    async with await h2c.connect() as client:
        body = encrypt(b"ws", info["keys"]["p256dh"], info["keys"]["auth"])
        response = await client.request(
            "POST",
            path_of(registration.endpoint),
            {"ttl": "60", "content-encoding": "aes128gcm", "prefer": "respond-async"},
            body,
        )
        assert response.status == 202
        receipts = await _receipt_monitor(
            client, link_target(response.headers["link"], REL_RECEIPT) or ""
        )
        notification = await agent.next_notification()  # acknowledged with code 100
        assert notification.plaintext == b"ws"
        receipt = await receipts.next_push(5)
        assert receipt.status == 204
        assert receipt.path == path_of(response.headers["location"])
    await agent.close()


async def test_websocket_and_http2_user_agents_on_one_service(h2c: Rfc8030) -> None:
    """A Firefox-protocol UA and an RFC 8030 UA are served at once, each its own messages."""
    agent = await h2c.service.agent()
    registration = await agent.register()
    info = registration.subscription_info()
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        monitor = await client.open_stream("GET", path_of(ua.subscription))
        await asyncio.sleep(0.05)
        ws_body = encrypt(b"to websocket", info["keys"]["p256dh"], info["keys"]["auth"])
        async with httpx.AsyncClient() as http1:
            response = await http1.post(
                registration.endpoint,
                content=ws_body,
                headers={"ttl": "60", "content-encoding": "aes128gcm"},
            )
            assert response.status_code == 201
        await push(client, ua, "to http2")
        assert (await agent.next_notification()).plaintext == b"to websocket"
        assert ua.decrypt(await monitor.next_push(5)) == "to http2"
        client.cancel(monitor)
    await agent.close()


def test_encryption_keys_roundtrip_helper() -> None:
    """The helper UA's keys make a valid subscription (sanity of the test itself)."""
    ua = UA({"location": "x", "link": f'<p>; rel="{REL_PUSH}", <s>; rel="{REL_SET}"'})
    assert len(public_key_bytes(ua.key.public_key())) == 65
    assert b64url_encode(ua.auth)
