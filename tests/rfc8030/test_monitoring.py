"""RFC 8030 sections 6, 6.1 and 6.2: receiving by server push, for a subscription or a set.

Also: user agents of both protocols (WebSocket and HTTP/2) on one service.
"""

from __future__ import annotations

import asyncio
import email.utils

import h2.settings
import httpx

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import REL_PUSH, drain, path_of, push, subscribe
from tidings.http2 import H2Client
from tidings.webpush import (
    encrypt,
)
from tidings.webpush.links import link_target


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


async def test_6_pushed_message_names_its_push_resource(h2c: Rfc8030) -> None:
    """§6: the pushed response SHOULD carry Link rel=urn:ietf:params:push."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "x")
        (pushed,) = await drain(client, ua.subscription)
        assert link_target(pushed.headers.get("link", ""), REL_PUSH) == ua.push


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


async def test_6_1_set_push_promise_names_the_push_resource(h2c: Rfc8030) -> None:
    """§6.1: for a set, the synthetic request (the PUSH_PROMISE) MUST carry the push
    resource's Link, so the UA can tell the subscriptions apart before the response."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        await push(client, second, "x")
        (pushed,) = await drain(client, first.set)
        assert link_target(pushed.request_headers.get("link", ""), REL_PUSH) == second.push


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


async def test_6_monitoring_needs_http2(h2c: Rfc8030) -> None:
    """§6: over HTTP/1.1 a monitor cannot work: a clear 400, not a hang."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
    async with httpx.AsyncClient() as http1:
        response = await http1.get(ua.subscription, timeout=5)
    assert response.status_code == 400
    assert response.json()["errno"] == 117


class _NoPushClient(H2Client):
    """An HTTP/2 client that disables server push (SETTINGS_ENABLE_PUSH 0), as curl does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self._flush()


async def test_6_monitor_without_server_push_is_refused(h2c: Rfc8030) -> None:
    """§6: messages can only arrive as server pushes; a monitor whose connection refuses
    them must not be told "no messages" (204) while messages are stored."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "stored")
    client = await _NoPushClient.connect(h2c.service.url)
    try:
        await asyncio.sleep(0.1)  # the SETTINGS change is acknowledged
        stream = await client.open_stream("GET", path_of(ua.subscription), {"prefer": "wait=0"})
        response = await asyncio.wait_for(stream.response, 5)
    finally:
        await client.close()
    async with await h2c.connect() as client:  # nothing was lost meanwhile
        assert [ua.decrypt(p) for p in await drain(client, ua.subscription)] == ["stored"]
    assert 400 <= response.status < 500, response


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
