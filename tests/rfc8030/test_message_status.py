"""Message status for its sender: GET on the push message resource (docs/rfc8030.md).

Every state is reached through the real protocols on a running service: an RFC 8030
user agent (monitor, DELETE acknowledgement), a Firefox-protocol user agent (WebSocket
ack), the application server's DELETE, Topic replacement, the expiry sweep; and the
status is forgotten by the sweep after `message_status_retention`.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import UA, drain, path_of, push, subscribe
from support.service import running_service
from tidings.http2 import H2Client
from tidings.webpush import VapidKey, encrypt, sign_vapid

DEADLINE = 20.0  # seconds an "eventually" may take on a loaded machine


def vapid(key: VapidKey, origin: str) -> str:
    return sign_vapid(key, origin, "mailto:ops@example.com").authorization


async def signed_push(client: H2Client, ua: UA, key: VapidKey, text: str, **headers: str) -> str:
    """A VAPID-signed push; the path of its message resource."""
    status, answer = await push(client, ua, text, authorization=vapid(key, ua.push), **headers)
    assert status == 201, answer
    return path_of(answer["location"])


async def get_status(
    client: H2Client, path: str, key: VapidKey | None, origin: str
) -> tuple[int, dict[str, Any]]:
    headers = {} if key is None else {"authorization": vapid(key, origin)}
    response = await client.request("GET", path, headers)
    return response.status, json.loads(response.body)


async def eventually_state(
    client: H2Client, path: str, key: VapidKey, origin: str, state: str
) -> dict[str, Any]:
    """The status once it reads `state` (deliveries are recorded lazily)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        status, document = await get_status(client, path, key, origin)
        assert status == 200, document
        if document["state"] == state or time.monotonic() > deadline:
            assert document["state"] == state, document
            return document
        await asyncio.sleep(0.05)


async def test_stored_delivered_over_http2_then_acknowledged(h2c: Rfc8030) -> None:
    key, origin = VapidKey.generate(), h2c.service.url
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        before = time.time()
        path = await signed_push(client, ua, key, "hello")
        status, document = await get_status(client, path, key, origin)
        assert status == 200
        assert document["state"] == "stored"
        assert document["message"] and document["ttl"] == 60
        assert before - 1 <= document["created_at"] == document["stored_at"] <= time.time() + 1
        assert document["expires_at"] == round(document["created_at"] + 60, 3)
        assert document["delivered_via"] is None and document["acknowledged_at"] is None
        pushed = await drain(client, ua.subscription)
        assert [p.path for p in pushed] == [path]
        delivered = await eventually_state(client, path, key, origin, "delivered")
        assert delivered["delivered_via"] == "http2"
        assert delivered["delivered_at"] >= delivered["created_at"]
        assert (await client.request("DELETE", path)).status == 204  # the ack (§6.2)
        done = await eventually_state(client, path, key, origin, "acknowledged")
        assert done["acknowledged_at"] >= done["delivered_at"]
        assert done["delivered_via"] == "http2"


async def test_acknowledged_over_websocket(h2c: Rfc8030) -> None:
    key, origin = VapidKey.generate(), h2c.service.url
    agent = await h2c.service.agent()
    registration = await agent.register()
    info = registration.subscription_info()
    body = encrypt(b"ws", info["keys"]["p256dh"], info["keys"]["auth"])
    async with httpx.AsyncClient() as http1:
        response = await http1.post(
            registration.endpoint,
            content=body,
            headers={
                "ttl": "60",
                "content-encoding": "aes128gcm",
                "authorization": vapid(key, registration.endpoint),
            },
        )
        assert response.status_code == 201
        path = path_of(response.headers["location"])
    assert (await agent.next_notification()).plaintext == b"ws"  # acknowledged (code 100)
    async with await h2c.connect() as client:
        done = await eventually_state(client, path, key, origin, "acknowledged")
    assert done["delivered_via"] == "websocket"
    assert done["acknowledged_at"] >= done["delivered_at"] >= done["created_at"]
    await agent.close()


async def test_sender_delete_topic_replacement_and_expiry(h2c: Rfc8030) -> None:
    key, origin = VapidKey.generate(), h2c.service.url
    assert h2c.service.service is not None
    store = h2c.service.service.store
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        cancelled = await signed_push(client, ua, key, "never mind")
        assert (await client.request("DELETE", cancelled)).status == 204  # §5.3
        deleted = await eventually_state(client, cancelled, key, origin, "deleted")
        assert deleted["deleted_at"] >= deleted["created_at"]
        assert deleted["delivered_at"] is None
        first = await signed_push(client, ua, key, "v1", topic="news")
        await signed_push(client, ua, key, "v2", topic="news")
        replaced = await eventually_state(client, first, key, origin, "replaced")
        assert replaced["replaced_at"] >= replaced["created_at"]
        short = await signed_push(client, ua, key, "short", ttl="1")
        ref = h2c.service.service.sealer.open_message(short.rsplit("/", 1)[-1])
        # The sweep (every 0.2 s here) writes "expired" once the TTL has passed.
        deadline = time.monotonic() + DEADLINE
        while True:
            row = await store.get_message_status(ref.uaid, ref.message_id)
            assert row is not None
            if row.state == "expired" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert row.state == "expired"
        expired = await eventually_state(client, short, key, origin, "expired")
        assert expired["expired_at"] >= expired["expires_at"]


async def test_ttl0_pushes_are_delivered_or_expired(h2c: Rfc8030) -> None:
    key, origin = VapidKey.generate(), h2c.service.url
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        dropped = await signed_push(client, ua, key, "nobody", ttl="0")
        document = await eventually_state(client, dropped, key, origin, "expired")
        assert document["ttl"] == 0 and document["stored_at"] is None
        monitor = await client.open_stream("GET", path_of(ua.subscription))
        await asyncio.sleep(0.1)  # as the conformance test: the monitor is attached
        live = await signed_push(client, ua, key, "live", ttl="0")
        assert ua.decrypt(await monitor.next_push(5)) == "live"
        document = await eventually_state(client, live, key, origin, "delivered")
        assert document["delivered_via"] == "http2" and document["expired_at"] is None
        client.cancel(monitor)


async def test_401_403_404(h2c: Rfc8030) -> None:
    key, origin = VapidKey.generate(), h2c.service.url
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        path = await signed_push(client, ua, key, "mine")
        status, error = await get_status(client, path, None, origin)
        assert (status, error["code"], error["errno"]) == (401, 401, 109)
        assert "unsigned pushes have no status" in error["message"]
        status, error = await get_status(client, path, VapidKey.generate(), origin)
        assert (status, error["errno"]) == (403, 107)
        status, error = await get_status(client, path, key, "https://elsewhere.example")
        assert (status, error["errno"]) == (403, 108)  # aud must be this service
        stale = sign_vapid(key, origin, "mailto:ops@example.com", now=time.time() - 86400)
        response = await client.request("GET", path, {"authorization": stale.authorization})
        assert response.status == 403  # expired token
        unsigned = await push(client, ua, "anonymous")
        status, error = await get_status(client, path_of(unsigned[1]["location"]), key, origin)
        assert (status, error["errno"]) == (404, 404)
        status, error = await get_status(client, "/m/not-a-token", key, origin)
        assert (status, error["errno"]) == (404, 102)
        response = await client.request("PUT", path)
        assert response.status == 405 and response.headers["allow"] == "GET, DELETE"


async def test_statuses_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    key = VapidKey.generate()
    settings = {"expiry_sweep_interval": 0.1, "message_status_retention": 1}
    async with running_service(tmp_path, **settings) as service:
        assert service.service is not None
        rfc = Rfc8030(service)
        async with await rfc.connect() as client:
            ua = await subscribe(client)
            paths = [await signed_push(client, ua, key, f"m{i}") for i in range(3)]
            for path in paths:
                assert (await client.request("DELETE", path)).status == 204
            refs = [service.service.sealer.open_message(p.rsplit("/", 1)[-1]) for p in paths]
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                rows = [
                    await service.service.store.get_message_status(r.uaid, r.message_id)
                    for r in refs
                ]
                if rows == [None] * 3:
                    break
                await asyncio.sleep(0.1)
            assert rows == [None] * 3  # the table holds none of them any more
            status, error = await get_status(client, paths[0], key, service.url)
            assert (status, error["errno"]) == (404, 404)


async def test_an_ack_right_after_an_http2_delivery_is_an_acknowledgement(h2c: Rfc8030) -> None:
    """HTTP/2 deliveries are written at once (only WebSocket ones wait for their ack),
    so a user agent's DELETE right after the push reads as acknowledged, not deleted."""
    key, origin = VapidKey.generate(), h2c.service.url
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        paths = [await signed_push(client, ua, key, f"m{i}") for i in range(3)]
        pushed = await drain(client, ua.subscription)
        assert [p.path for p in pushed] == paths
        for path in paths:
            assert (await client.request("DELETE", path)).status == 204
        for path in paths:
            done = await eventually_state(client, path, key, origin, "acknowledged")
            assert done["delivered_via"] == "http2" and done["deleted_at"] is None


async def test_pending_deliveries_are_bounded(h2c: Rfc8030, monkeypatch: Any) -> None:
    from tidings.service import acknowledgements
    from tidings.service.store import StoredMessage

    service = h2c.service.service
    assert service is not None
    monkeypatch.setattr(acknowledgements, "MAX_PENDING_DELIVERIES", 3)
    now = time.time()
    for i in range(10):
        message = StoredMessage(f"{i:032x}", "ua", "ch", b"", 60, now, now + 60)
        service.note_delivered(message, "websocket")
    assert len(service._deliveries) == 3  # the rest is left to the acks
