"""Real senders to a Tidings user agent through a Tidings service, over real sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from support.service import RunningService, pywebpush_key
from tidings.useragent import InvalidStateError, SubscriptionRefused
from tidings.webpush import VapidKey, b64url_decode

from .helpers import Inbox, make_agent, send_pywebpush, send_raw

PAYLOAD = {"title": "Tidings", "body": "héllo wörld ✓", "n": [1, 2, 3]}


async def test_pywebpush_exact_bytes_text_and_json(service: RunningService, tmp_path: Path) -> None:
    key = VapidKey.generate()
    inbox = Inbox()
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=inbox)
        subscription = await registration.push_manager.subscribe(
            application_server_key=key.public_key_b64
        )
        info = subscription.to_json()
        assert set(info) == {"endpoint", "expirationTime", "keys"}
        assert info["expirationTime"] is None and set(info["keys"]) == {"p256dh", "auth"}
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


async def test_legacy_aesgcm_from_pywebpush(service: RunningService, tmp_path: Path) -> None:
    from pywebpush import webpush

    key = VapidKey.generate()
    inbox = Inbox()
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=inbox)
        sub = await registration.push_manager.subscribe(application_server_key=key.public_key_b64)
        response = await asyncio.to_thread(
            webpush,
            sub.to_json(),
            data="old coding",
            vapid_private_key=pywebpush_key(key),
            vapid_claims={"sub": "mailto:ops@example.com"},
            content_encoding="aesgcm",
            ttl=60,
        )
        assert response.status_code == 201, response.text
        assert (await inbox.wait_for(1))[0].data.text() == "old coding"  # type: ignore[union-attr]


async def test_tidings_sender(service: RunningService, tmp_path: Path) -> None:
    from tidings.sender import Sender

    key = VapidKey.generate()
    inbox = Inbox()
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
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


async def test_npm_web_push_cli_and_library(service: RunningService, tmp_path: Path) -> None:
    from support.node import VapidKeys, node_cli_send, node_send, require_node

    require_node()
    vapid = VapidKeys.generate()
    inbox = Inbox()
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
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
        answer = await node_send(info, bytes(range(200)), vapid=vapid, ttl=60)
        assert answer["statusCode"] == 201, answer
        events = await inbox.wait_for(2, timeout=20)
        assert events[1].data is not None and events[1].data.bytes() == bytes(range(200))


async def test_subscribe_same_key_same_subscription_other_key_refused(
    service: RunningService, tmp_path: Path
) -> None:
    key, other = VapidKey.generate(), VapidKey.generate()
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
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


async def test_unrestricted_subscription_and_empty_push(
    service: RunningService, tmp_path: Path
) -> None:
    inbox = Inbox()
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
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
