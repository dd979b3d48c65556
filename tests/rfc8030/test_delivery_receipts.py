"""RFC 8030 sections 5.1, 6.2, 6.3 and 7.3: delivery receipts and receipt subscriptions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import REL_RECEIPT, drain, path_of, push, subscribe, tampered
from support.service import running_service
from tidings.http2 import H2Client
from tidings.service import maintenance
from tidings.webpush import (
    encrypt,
)
from tidings.webpush.links import link_target


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


async def test_5_1_a_link_without_respond_async_asks_for_no_receipt(h2c: Rfc8030) -> None:
    """§5.1: a receipt is asked for with `Prefer: respond-async`; the receipt subscription
    `Link` only says where receipts go. Without the preference the push is a plain 201
    and no receipt is sent (a Link naming no receipt subscription is still a 400)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, first = await push(client, ua, "wanted", prefer="respond-async")
        receipt_url = link_target(first["link"], REL_RECEIPT) or ""
        link = f'<{receipt_url}>; rel="{REL_RECEIPT}"'
        status, second = await push(client, ua, "not wanted", link=link)
        assert status == 201 and "link" not in second
        receipts = await _receipt_monitor(client, receipt_url)
        for pushed in await drain(client, ua.subscription):
            await client.request("DELETE", pushed.path)
        assert (await receipts.next_push(5)).path == path_of(first["location"])
        with pytest.raises(TimeoutError):
            await receipts.next_push(0.5)
        bogus = f'<{tampered(receipt_url)}>; rel="{REL_RECEIPT}"'
        assert (await push(client, ua, "x", link=bogus))[0] == 400


async def test_5_1_invalid_receipt_subscription_is_400(h2c: Rfc8030) -> None:
    """§5.1: a receipt subscription the service does not know is a 400."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        bogus = h2c.service.url + "/r/" + "A" * 60
        status, _ = await push(
            client, ua, "x", prefer="respond-async", link=f'<{bogus}>; rel="{REL_RECEIPT}"'
        )
        assert status == 400


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


async def test_6_3_receipt_carries_no_data_and_the_get_stays_open(h2c: Rfc8030) -> None:
    """§6.3: a receipt is a pushed response without a body; the GET is never answered."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        receipts = await client.open_stream(
            "GET", path_of(link_target(headers["link"], REL_RECEIPT) or "")
        )
        (delivered,) = await drain(client, ua.subscription)
        await client.request("DELETE", delivered.path)
        receipt = await receipts.next_push(5)
        assert receipt.status == 204 and receipt.body == b""
        assert receipt.request_headers[":method"] == "GET"
        await asyncio.sleep(0.1)
        assert not receipts.response.done()
        client.cancel(receipts)


async def test_6_3_receipt_410_when_the_ttl_runs_out(h2c: Rfc8030) -> None:
    """§6.3: the service gave up (TTL expired undelivered): a pushed 410."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "too late", ttl="1", prefer="respond-async")
        receipts = await _receipt_monitor(client, link_target(headers["link"], REL_RECEIPT) or "")
        receipt = await receipts.next_push(5)
        assert receipt.status == 410
        assert receipt.path == path_of(headers["location"])


async def test_6_3_ttl_zero_receipt_410_when_no_user_agent_is_connected(h2c: Rfc8030) -> None:
    """§5.2 and §6.3: a TTL-0 push nobody could take is dropped at once, so the service
    gave up on it: the receipt asked for is a 410, not silence (the sender would wait
    forever)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        status, headers = await push(client, ua, "now or never", ttl="0", prefer="respond-async")
        assert status == 202 and headers["ttl"] == "0"
        receipts = await _receipt_monitor(client, link_target(headers["link"], REL_RECEIPT) or "")
        receipt = await receipts.next_push(5)
        assert receipt.status == 410
        assert receipt.path == path_of(headers["location"])
        assert await drain(client, ua.subscription) == []  # and it was never stored


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


async def _websocket_receipt(h2c: Rfc8030, ttl: str) -> None:
    """A push asking for a receipt to a user agent on Firefox's WebSocket protocol,
    which acknowledges it (code 100): a 204 receipt."""
    agent = await h2c.service.agent()
    registration = await agent.register()
    info = registration.subscription_info()
    async with await h2c.connect() as client:
        body = encrypt(b"ws", info["keys"]["p256dh"], info["keys"]["auth"])
        response = await client.request(
            "POST",
            path_of(registration.endpoint),
            {"ttl": ttl, "content-encoding": "aes128gcm", "prefer": "respond-async"},
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


async def test_receipts_from_websocket_acks(h2c: Rfc8030) -> None:
    """Receipts behave the same when the user agent speaks Firefox's WebSocket protocol."""
    await _websocket_receipt(h2c, "60")


async def test_6_3_ttl_zero_receipt_204_when_acknowledged_live(h2c: Rfc8030) -> None:
    """A TTL-0 push a monitoring user agent took and acknowledged gets its 204 (and the
    acknowledgement its 204), though such a message is never stored."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        monitor = await client.open_stream("GET", path_of(ua.subscription))
        await asyncio.sleep(0.1)
        status, headers = await push(client, ua, "live", ttl="0", prefer="respond-async")
        assert status == 202
        receipts = await _receipt_monitor(client, link_target(headers["link"], REL_RECEIPT) or "")
        pushed = await monitor.next_push(5)
        assert ua.decrypt(pushed) == "live"
        assert (await client.request("DELETE", pushed.path)).status == 204
        receipt = await receipts.next_push(5)
        assert (receipt.status, receipt.path) == (204, path_of(headers["location"]))
        assert (await client.request("DELETE", pushed.path)).status == 404  # acked once


async def test_6_3_ttl_zero_receipt_410_when_never_acknowledged(
    h2c: Rfc8030, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TTL-0 push taken live but not acknowledged within the wait: the service gives
    up on it, a 410."""
    monkeypatch.setattr(maintenance, "LIVE_ACK_WAIT", 0.3)
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        monitor = await client.open_stream("GET", path_of(ua.subscription))
        await asyncio.sleep(0.1)
        _, headers = await push(client, ua, "ignored", ttl="0", prefer="respond-async")
        receipts = await _receipt_monitor(client, link_target(headers["link"], REL_RECEIPT) or "")
        pushed = await monitor.next_push(5)
        receipt = await receipts.next_push(5)
        assert (receipt.status, receipt.path) == (410, path_of(headers["location"]))
        assert (await client.request("DELETE", pushed.path)).status == 404  # too late


async def test_ttl_zero_receipts_left_waiting_at_shutdown_are_410(tmp_path: Path) -> None:
    """A node that stops gives up on the TTL-0 messages it sent and that wait for their
    acknowledgement (kept only in its memory): 410 receipts, read after a restart."""
    async with running_service(tmp_path) as service, await H2Client.connect(service.url) as client:
        ua = await subscribe(client)
        monitor = await client.open_stream("GET", path_of(ua.subscription))
        await asyncio.sleep(0.1)
        _, headers = await push(client, ua, "unacked", ttl="0", prefer="respond-async")
        await monitor.next_push(5)
    async with running_service(tmp_path) as service, await H2Client.connect(service.url) as client:
        receipt_url = link_target(headers["link"], REL_RECEIPT) or ""
        receipt = await (await _receipt_monitor(client, receipt_url)).next_push(5)
        assert (receipt.status, receipt.path) == (410, path_of(headers["location"]))


async def test_ttl_zero_receipt_from_a_websocket_ack(h2c: Rfc8030) -> None:
    """The same over Firefox's WebSocket protocol: its ack of a TTL-0 message is a 204."""
    await _websocket_receipt(h2c, "0")


async def test_7_3_unknown_receipt_subscription_is_404(h2c: Rfc8030) -> None:
    """§7.3: a GET of a receipt subscription the service does not have is a 404."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        receipt_url = link_target(headers["link"], REL_RECEIPT) or ""
        response = await client.request("GET", path_of(tampered(receipt_url)), timeout=5)
        assert response.status == 404


async def test_7_3_application_server_deletes_its_receipt_subscription(h2c: Rfc8030) -> None:
    """§7.3: an application server removes its receipt subscription with DELETE; then a
    GET of it is a 404 and a push naming it is a 400 (§5.1)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        receipt_url = link_target(headers["link"], REL_RECEIPT) or ""
        response = await client.request("DELETE", path_of(receipt_url))
        assert response.status == 204, (response.status, response.body)
        assert (await client.request("GET", path_of(receipt_url), timeout=5)).status == 404
        link = f'<{receipt_url}>; rel="{REL_RECEIPT}"'
        assert (await push(client, ua, "y", prefer="respond-async", link=link))[0] == 400


async def _monitor_that_never_confirms(port: int, path: str) -> None:
    """A receipt monitor that reads until a receipt is pushed, answers nothing (not even
    the PING that follows it), then drops its connection."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}")]
    conn.send_headers(
        conn.get_next_available_stream_id(), [*headers, (":path", path)], end_stream=True
    )
    writer.write(conn.data_to_send())
    try:
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                assert data, "the service closed the monitor"
                events = conn.receive_data(data)  # its answers are never sent
                if any(isinstance(e, h2.events.PushedStreamReceived) for e in events):
                    return
    finally:
        writer.transport.abort()


async def test_6_3_a_receipt_pushed_to_a_connection_that_dies_is_pushed_again(
    h2c: Rfc8030,
) -> None:
    """A receipt is forgotten only once its receiver has read it (an HTTP/2 PING after it
    is answered): one pushed to a connection that dies first goes to the next monitor."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "call", prefer="respond-async")
        receipt_path = path_of(link_target(headers["link"], REL_RECEIPT) or "")
        (delivered,) = await drain(client, ua.subscription)
        assert (await client.request("DELETE", delivered.path)).status == 204
        port = int(h2c.service.url.rsplit(":", 1)[1])
        await _monitor_that_never_confirms(port, receipt_path)
        receipts = await _receipt_monitor(client, receipt_path)
        receipt = await receipts.next_push(15)
        assert receipt.status == 204 and receipt.path == path_of(headers["location"])
        client.cancel(receipts)
