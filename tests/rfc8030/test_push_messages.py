"""RFC 8030 sections 5, 5.2, 7.2 and 9.1: a push request and the message it stores.

201 and its `Location`, `TTL` (required, answered, expiry), cancelling, what is not
forwarded to the user agent, `Last-Modified`, the size limit, unknown push resources,
and the header fields over HTTP/1.1. Section numbers are RFC 8030's.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import UA, drain, path_of, push, subscribe, tampered
from tidings.webpush import (
    VapidKey,
    encrypt,
    public_key_bytes,
    sign_vapid,
)

MAX_TTL = 30 * 24 * 3600  # the service's default max_ttl


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


async def test_5_2_ttl_is_digits_only(h2c: Rfc8030) -> None:
    """§5.2: TTL = 1*DIGIT; anything else is refused like a missing TTL (400)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        for bad in ("-1", "1.5", "ten", "", "60, 60"):
            assert (await push(client, ua, "x", ttl=bad))[0] == 400, bad


async def test_5_2_answered_ttl_never_exceeds_the_request(h2c: Rfc8030) -> None:
    """§5.2: the TTL answered MUST be ≤ the one asked; an overflowing TTL is capped."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        status, headers = await push(client, ua, "x", ttl=str(10**20))
        assert status == 201
        assert int(headers["ttl"]) == MAX_TTL
        status, headers = await push(client, ua, "y", ttl=str(MAX_TTL + 1))
        assert status == 201 and int(headers["ttl"]) <= MAX_TTL + 1


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


async def test_7_2_only_expired_messages_is_as_if_none_was_sent(h2c: Rfc8030) -> None:
    """§7.2: a GET when everything has expired looks as though nothing was ever sent."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "gone soon", ttl="1")
        await asyncio.sleep(1.3)
        stream = await client.open_stream("GET", path_of(ua.subscription), {"prefer": "wait=0"})
        response = await asyncio.wait_for(stream.response, 5)
        assert response.status == 204 and stream.pushes.empty()


async def test_7_2_last_modified_is_when_the_push_was_requested(h2c: Rfc8030) -> None:
    """§7.2: a stored message SHOULD carry Last-Modified = when delivery was requested."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        requested = time.time()
        await push(client, ua, "x")
        await asyncio.sleep(1.1)
        (pushed,) = await drain(client, ua.subscription)
    stamp = email.utils.parsedate_to_datetime(pushed.headers["last-modified"]).timestamp()
    assert requested - 1 <= stamp <= requested + 1


async def test_7_2_4096_bytes_are_accepted_and_413_only_above(h2c: Rfc8030) -> None:
    """§7.2: a push service MUST NOT answer 413 to a body of 4096 bytes or less; Tidings
    takes up to `max_body` (autopush's 5630 by default) and refuses more."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        body = encrypt(b"x" * 3993, public_key_bytes(ua.key.public_key()), ua.auth)
        assert len(body) == 4096
        headers = {"ttl": "60", "content-encoding": "aes128gcm"}
        response = await client.request("POST", path_of(ua.push), headers, body)
        assert response.status == 201
        (pushed,) = await drain(client, ua.subscription)
        assert ua.decrypt(pushed) == "x" * 3993
        max_body = h2c.service.config.max_body
        larger = body + b"\0" * (max_body - len(body))
        response = await client.request("POST", path_of(ua.push), headers, larger)
        assert response.status == 201  # not a valid body for the user agent, but accepted
        response = await client.request("POST", path_of(ua.push), headers, larger + b"\0")
        assert response.status == 413


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


async def test_7_3_push_to_an_unknown_push_resource_is_404(h2c: Rfc8030) -> None:
    """§7.3: a push to a push resource the service does not have is a 404."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, None))[0] == 201
        response = await client.request("POST", path_of(tampered(ua.push)), {"ttl": "60"})
        assert response.status == 404


async def test_9_1_header_fields_over_http1(h2c: Rfc8030) -> None:
    """§1.1/§9.1: subscribe, push (TTL, Urgency, Topic in any letter case), cancel and
    unsubscribe work over HTTP/1.1; only monitoring needs HTTP/2."""
    async with httpx.AsyncClient(base_url=h2c.service.url, timeout=5) as http1:
        created = await http1.post("/subscribe")
        assert created.status_code == 201 and created.http_version == "HTTP/1.1"
        ua = UA({k.lower(): v for k, v in created.headers.items()})
        response = await http1.post(
            ua.push,
            content=ua.encrypt("over 1.1"),
            headers={"tTl": "60", "URGENCY": "high", "Topic": "t", "content-encoding": "aes128gcm"},
        )
        assert response.status_code == 201 and response.headers["ttl"] == "60"
        assert (await http1.delete(response.headers["location"])).status_code == 204
        refused = await http1.post(ua.push, headers={"TTL": "60", "urgency": "soon"})
        assert refused.status_code == 400 and json.loads(refused.content)["errno"]
        assert (await http1.delete(ua.subscription)).status_code == 204
