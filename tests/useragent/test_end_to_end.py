"""Real senders to a Tidings user agent through a Tidings service, over real sockets,
over both push protocols: Firefox's WebSocket protocol and RFC 8030 (HTTP/2 server push)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from support.service import RunningService, pywebpush_key
from tidings.useragent import Http2Transport, InvalidStateError, SubscriptionRefused, UserAgent
from tidings.useragent.websocket import WebSocketTransport
from tidings.webpush import VapidKey, b64url_decode

from .helpers import Inbox, make_agent, send_pywebpush, send_raw

PAYLOAD = {"title": "Tidings", "body": "héllo wörld ✓", "n": [1, 2, 3]}


@pytest.fixture(params=["websocket", "rfc8030"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def agent(service: RunningService, state: Path, protocol: str, **kwargs: Any) -> UserAgent:
    """A user agent speaking `protocol` to `service` (RFC 8030 over cleartext h2c)."""
    if protocol == "rfc8030":
        return make_agent(service.url, state, transport="rfc8030", **kwargs)
    return make_agent(service.ws_url, state, **kwargs)


def h2_agent(service: RunningService, state: Path, **kwargs: Any) -> UserAgent:
    return agent(service, state, "rfc8030", **kwargs)


def service_uaid(service: RunningService, ua: UserAgent) -> str:
    """The service's id of an RFC 8030 user agent's subscription set."""
    assert service.service is not None and ua.uaid, ua.uaid
    return service.service.open_set(ua.uaid.rsplit("/set/", 1)[1])


def uaid_of(service: RunningService, ua: UserAgent, protocol: str) -> str:
    """The service's id of the user agent (over RFC 8030, its subscription set's)."""
    if protocol == "rfc8030":
        return service_uaid(service, ua)
    assert ua.uaid is not None
    return ua.uaid


async def test_pywebpush_exact_bytes_text_and_json(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    key = VapidKey.generate()
    inbox = Inbox()
    async with agent(service, tmp_path / "ua", protocol) as ua:
        expected = Http2Transport if protocol == "rfc8030" else WebSocketTransport
        assert isinstance(ua.transport, expected)
        registration = await ua.register("app", on_push=inbox)
        subscription = await registration.push_manager.subscribe(
            application_server_key=key.public_key_b64
        )
        info = subscription.to_json()
        assert set(info) == {"endpoint", "expirationTime", "keys"}
        assert info["expirationTime"] is None and set(info["keys"]) == {"p256dh", "auth"}
        assert info["endpoint"].startswith(service.url + "/push/")
        if protocol == "rfc8030":
            assert ua.uaid is not None and ua.uaid.startswith(service.url + "/set/")
        text = json.dumps(PAYLOAD, ensure_ascii=False)
        binary = bytes(range(256)) * 8
        assert await send_pywebpush(info, text, key) == 201
        assert await send_pywebpush(info, binary, key) == 201
        events = await inbox.wait_for(2)
        assert events[0].data is not None and events[1].data is not None
        assert events[0].data.text() == text
        assert events[0].data.json() == PAYLOAD
        assert events[0].data.bytes() == text.encode()
        assert events[1].data.bytes() == binary
        assert events[0].scope == "app" and events[0].subscription == subscription
        if protocol == "rfc8030":
            assert events[0].message_id.startswith(service.url + "/m/")


async def test_legacy_aesgcm_from_pywebpush(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    from pywebpush import webpush

    key = VapidKey.generate()
    inbox = Inbox()
    async with agent(service, tmp_path / "ua", protocol) as ua:
        registration = await ua.register("app", on_push=inbox)
        sub = await registration.push_manager.subscribe(application_server_key=key.public_key_b64)
        response = await asyncio.to_thread(
            webpush,
            sub.to_json(),
            data="old coding ✓",
            vapid_private_key=pywebpush_key(key),
            vapid_claims={"sub": "mailto:ops@example.com"},
            content_encoding="aesgcm",
            ttl=60,
        )
        assert response.status_code == 201, response.text
        (event,) = await inbox.wait_for(1)
        assert event.data is not None and event.data.text() == "old coding ✓"


async def test_tidings_sender(service: RunningService, tmp_path: Path, protocol: str) -> None:
    from tidings.sender import Sender

    key = VapidKey.generate()
    inbox = Inbox()
    async with agent(service, tmp_path / "ua", protocol) as ua:
        registration = await ua.register("app", on_push=inbox)
        sub = await registration.push_manager.subscribe(application_server_key=key.public_key_b64)
        async with Sender(key, "mailto:ops@example.com") as sender:
            result = await sender.send(sub.to_json(), json.dumps(PAYLOAD), ttl=60)
            assert result.ok, result
            result = await sender.send(sub.to_subscription(), b"\x00\xff", ttl=60)
            assert result.ok, result
        events = await inbox.wait_for(2)
        assert events[0].data is not None and events[0].data.json() == PAYLOAD
        assert events[1].data is not None and events[1].data.bytes() == b"\x00\xff"


async def test_npm_web_push_cli_and_library(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    from support.node import VapidKeys, node_cli_send, node_send, require_node

    require_node()
    vapid = VapidKeys.generate()
    inbox = Inbox()
    async with agent(service, tmp_path / "ua", protocol) as ua:
        registration = await ua.register("app", on_push=inbox)
        sub = await registration.push_manager.subscribe(application_server_key=vapid.public_key)
        info = sub.to_json()
        text = json.dumps(PAYLOAD, ensure_ascii=False)
        result = await node_cli_send(
            info["endpoint"],
            key=info["keys"]["p256dh"],
            auth=info["keys"]["auth"],
            payload=text,
            vapid=vapid,
            ttl=60,
        )
        assert result.ok, result
        events = await inbox.wait_for(1, timeout=20)
        assert events[0].data is not None and events[0].data.json() == PAYLOAD
        if protocol == "rfc8030":
            assert events[0].data.text() == text
        answer = await node_send(info, bytes(range(200)), vapid=vapid, ttl=60)
        assert answer["statusCode"] == 201, answer
        events = await inbox.wait_for(2, timeout=20)
        assert events[1].data is not None and events[1].data.bytes() == bytes(range(200))


async def test_unrestricted_subscription_and_empty_push(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    inbox = Inbox()
    async with agent(service, tmp_path / "ua", protocol) as ua:
        registration = await ua.register("app", on_push=inbox)
        sub = await registration.push_manager.subscribe()
        assert sub.options.application_server_key is None
        response = await send_raw(sub.to_json(), b"", body=b"")
        assert response.status_code == 201
        response = await send_raw(sub.to_json(), b"raw")
        assert response.status_code == 201
        events = await inbox.wait_for(2)
        assert events[0].data is None
        assert events[1].data is not None and events[1].data.bytes() == b"raw"


async def test_unsubscribe_deletes_the_subscription(
    service: RunningService, tmp_path: Path, protocol: str
) -> None:
    async with agent(service, tmp_path / "ua", protocol) as ua:
        registration = await ua.register("app")
        subscription = await registration.push_manager.subscribe()
        assert (await send_raw(subscription.to_json(), b"x")).status_code == 201
        assert await subscription.unsubscribe() is True
        assert (await send_raw(subscription.to_json(), b"late")).status_code in (404, 410)
        fresh = await registration.push_manager.subscribe()
        assert fresh.endpoint != subscription.endpoint
        assert (await send_raw(fresh.to_json(), b"fresh")).status_code == 201


async def test_subscribe_same_key_same_subscription_other_key_refused(
    service: RunningService, tmp_path: Path
) -> None:
    key, other = VapidKey.generate(), VapidKey.generate()
    async with agent(service, tmp_path / "ua", "websocket") as ua:
        registration = await ua.register("app")
        manager = registration.push_manager
        assert await manager.get_subscription() is None
        first = await manager.subscribe(application_server_key=key.public_key_b64)
        raw = b64url_decode(key.public_key_b64)
        again = await manager.subscribe(application_server_key=raw)  # same key as bytes
        assert again == first and again.to_json() == first.to_json()
        assert first.options.application_server_key == raw and first.options.user_visible_only
        with pytest.raises(InvalidStateError):
            await manager.subscribe(application_server_key=other.public_key_b64)
        assert await manager.permission_state() == "granted"
        assert manager.supported_content_encodings == ("aes128gcm", "aesgcm")
        # Unsubscribing deletes it at the service: a later push is refused.
        assert await first.unsubscribe() is True
        assert await first.unsubscribe() is False
        assert await manager.get_subscription() is None
        assert await send_pywebpush_status(first.to_json(), key) in (404, 410)
        fresh = await manager.subscribe(application_server_key=other.public_key_b64)
        assert fresh.endpoint != first.endpoint


async def send_pywebpush_status(info: dict[str, object], key: VapidKey) -> int:
    from pywebpush import WebPushException

    try:
        return await send_pywebpush(info, "x", key)
    except WebPushException as exc:
        assert exc.response is not None
        return int(exc.response.status_code)


async def test_refused_register_raises_a_clear_error(tmp_path: Path) -> None:
    from support.service import running_service

    async with (
        running_service(tmp_path / "svc", max_subscriptions_per_user_agent=1) as service,
        make_agent(service.ws_url, tmp_path / "ua") as ua,
    ):
        first = await ua.register("one")
        await first.push_manager.subscribe()
        second = await ua.register("two")
        with pytest.raises(SubscriptionRefused) as info:
            await second.push_manager.subscribe()
        assert info.value.status == 429 and "two" in str(info.value)


async def test_one_set_carries_every_subscription_on_one_stream(
    service: RunningService, tmp_path: Path
) -> None:
    key = VapidKey.generate()
    inboxes = {scope: Inbox() for scope in ("a", "b")}
    async with h2_agent(service, tmp_path / "ua") as ua:
        infos = {}
        for scope, inbox in inboxes.items():
            registration = await ua.register(scope, on_push=inbox)
            manager = registration.push_manager
            restricted = key.public_key_b64 if scope == "a" else None
            infos[scope] = (await manager.subscribe(application_server_key=restricted)).to_json()
        assert infos["a"]["endpoint"] != infos["b"]["endpoint"]
        assert await send_pywebpush(infos["a"], "for a", key) == 201
        assert (await send_raw(infos["b"], b"for b")).status_code == 201
        assert [e.data.text() for e in await inboxes["a"].wait_for(1)] == ["for a"]  # type: ignore[union-attr]
        assert [e.data.text() for e in await inboxes["b"].wait_for(1)] == ["for b"]  # type: ignore[union-attr]
        # Both subscriptions are in one set, monitored by one GET on one connection.
        assert service.service is not None
        uaid = service_uaid(service, ua)
        assert len(service.service.hub.agents(uaid)) == 1
        assert len(service.service.hub) == 1 and ua.connections == 1
        stored = await service.service.store.count_subscriptions(uaid)
        assert stored == 2
