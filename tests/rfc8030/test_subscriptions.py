"""RFC 8030 sections 4, 4.1 and 7.3: subscribing, subscription sets, unsubscribing.

Over real HTTP/2 connections; each test names the section and requirement it checks,
and docs/rfc8030.md maps every MUST and SHOULD that applies to a push service to its test.
"""

from __future__ import annotations

import json
import time

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import REL_PUSH, REL_SET, UA, drain, path_of, push, subscribe, token_of
from tidings.webpush import (
    VapidKey,
    b64url_encode,
    public_key_bytes,
    sign_vapid,
)
from tidings.webpush.links import link_target


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


async def test_7_3_push_to_an_expired_subscription_is_404(h2c: Rfc8030) -> None:
    """§7.3: "MUST return a 404" to a push to an expired subscription. Tidings expires
    the subscriptions of a user agent not seen for `user_agent_expiry`, and those of a
    removed set (§7.3.1); an unsubscribed one stays 410 (Mozilla's answer)."""
    service = h2c.service.service
    assert service is not None
    async with await h2c.connect() as client:
        expired, removed = await subscribe(client), await subscribe(client)
        unsubscribed = await subscribe(client, set_url=removed.set)
        kept = await subscribe(client, set_url=removed.set)
        assert (await client.request("DELETE", path_of(unsubscribed.subscription))).status == 204
        uaid, _ = service.open_subscription(token_of(expired.subscription))
        await service.store.add_user_agent(uaid, time.time() - 400 * 86400)  # last seen then
        assert await service.sweep_user_agents(time.time()) == 1
        status, headers = await push(client, expired, "late")
        assert status == 404 and "cache-control" not in headers
        assert (await push(client, unsubscribed, "late"))[0] == 410
        assert (await push(client, kept, "still here"))[0] == 201
        assert (await client.request("DELETE", path_of(removed.set))).status == 204
        assert (await push(client, kept, "set removed"))[0] == 404


async def test_7_3_1_removed_subscription_leaves_its_set_and_a_removed_set_is_404(
    h2c: Rfc8030,
) -> None:
    """§7.3.1: a removed subscription is removed from its set; a removed set's GET is 404."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        await push(client, first, "for first")
        await push(client, second, "for second")
        assert (await client.request("DELETE", path_of(first.subscription))).status == 204
        assert [second.decrypt(p) for p in await drain(client, first.set)] == ["for second"]
        assert (await client.request("DELETE", path_of(first.set))).status == 204
        response = await client.request("GET", path_of(first.set), {"prefer": "wait=0"})
        assert response.status == 404
        response = await client.request("GET", path_of(second.subscription), {"prefer": "wait=0"})
        assert response.status == 404


def test_encryption_keys_roundtrip_helper() -> None:
    """The helper UA's keys make a valid subscription (sanity of the test itself)."""
    ua = UA({"location": "x", "link": f'<p>; rel="{REL_PUSH}", <s>; rel="{REL_SET}"'})
    assert len(public_key_bytes(ua.key.public_key())) == 65
    assert b64url_encode(ua.auth)
