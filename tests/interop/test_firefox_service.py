"""A real, unmodified Firefox uses Tidings as its push service (issue 3's end to end).

Firefox subscribes through the WebSocket protocol with a VAPID key; pywebpush and the
npm web-push CLI send; the service worker reports the exact plaintexts it decrypted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pywebpush import WebPushException, webpush

from support.firefox import FirefoxFactory, FirefoxPushClient
from support.node import VapidKeys, node_cli_send
from support.service import RunningService, pywebpush_key, running_service
from tidings.webpush import VapidKey

pytestmark = [pytest.mark.firefox, pytest.mark.timeout(240)]

SUBJECT = {"sub": "mailto:ops@example.com"}


def send(subscription: dict[str, Any], key: VapidKey, text: str, **options: Any) -> int:
    """Send with pywebpush; return the push service's status code."""
    topic = options.pop("topic", None)
    if topic is not None:
        options["headers"] = {"Topic": topic}  # pywebpush has no topic argument
    try:
        response = webpush(
            subscription,
            data=text,
            vapid_private_key=pywebpush_key(key),
            vapid_claims=dict(SUBJECT),
            **{"ttl": 60, **options},
        )
    except WebPushException as exc:  # raised for any status above 202
        assert exc.response is not None
        return int(exc.response.status_code)
    return int(response.status_code)


async def wait_connected(service: RunningService, count: int = 1, timeout: float = 45) -> None:
    """Wait until `count` user agents hold a connection to the service (Firefox said hello)."""
    assert service.service is not None
    deadline = time.monotonic() + timeout
    while len(service.service.hub) < count:
        assert time.monotonic() < deadline, "Firefox did not connect to the push service"
        await asyncio.sleep(0.05)


async def start_subscribed(
    service: RunningService, firefox_client: FirefoxFactory, key: VapidKey
) -> tuple[FirefoxPushClient, dict[str, Any]]:
    firefox = firefox_client(service.ws_url)
    await firefox.start()
    await wait_connected(service)
    subscription = await firefox.subscribe(key.public_key_b64, timeout=60)
    assert subscription["endpoint"].startswith(service.url + "/push/")
    return firefox, subscription


async def test_firefox_receives_from_pywebpush(
    tmp_path: Path, firefox_client: FirefoxFactory
) -> None:
    key = VapidKey.generate()
    async with running_service(tmp_path) as service:
        firefox, subscription = await start_subscribed(service, firefox_client, key)
        for text in ("Incoming call from Alice", "второе сообщение ✓"):
            assert await asyncio.to_thread(send, subscription, key, text) == 201
            assert await firefox.next_push() == text
        # The same subscription is restricted to this key: another key is refused.
        other = VapidKey.generate()
        assert await asyncio.to_thread(send, subscription, other, "forged") == 403
        await firefox.no_push_within(1.0)


async def test_firefox_offline_then_back(tmp_path: Path, firefox_client: FirefoxFactory) -> None:
    """Stored while closed: delivered on restart, in order; the Topic replaces, TTL expires."""
    key = VapidKey.generate()
    async with running_service(tmp_path) as service:
        firefox, subscription = await start_subscribed(service, firefox_client, key)
        assert await asyncio.to_thread(send, subscription, key, "warm-up") == 201
        assert await firefox.next_push() == "warm-up"
        await firefox.stop()
        assert service.service is not None
        deadline = time.monotonic() + 10
        while len(service.service.hub):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        assert await asyncio.to_thread(send, subscription, key, "while you were away") == 201
        assert await asyncio.to_thread(send, subscription, key, "ring 1", topic="call-42") == 201
        assert await asyncio.to_thread(send, subscription, key, "short-lived", ttl=1) == 201
        assert await asyncio.to_thread(send, subscription, key, "ring 2", topic="call-42") == 201
        await asyncio.sleep(1.5)  # "short-lived" is now past its TTL

        await firefox.start()
        received = [await firefox.next_push(timeout=60), await firefox.next_push()]
        # The service sends in order (tests/service checks the wire), but Firefox
        # decrypts and runs the worker's handlers concurrently, so reports may swap.
        assert sorted(received) == ["ring 2", "while you were away"]
        await firefox.no_push_within(2.0)


async def test_firefox_receives_from_the_npm_web_push_cli(
    tmp_path: Path, firefox_client: FirefoxFactory
) -> None:
    """The npm `web-push send-notification` CLI, as a user runs it, reaches Firefox."""
    vapid = VapidKeys.generate()
    async with running_service(tmp_path) as service:
        firefox = firefox_client(service.ws_url)
        await firefox.start()
        await wait_connected(service)
        subscription = await firefox.subscribe(vapid.public_key, timeout=60)
        for text in ("Incoming call from Bob", "hang up ✓"):
            result = await node_cli_send(
                subscription["endpoint"],
                key=subscription["keys"]["p256dh"],
                auth=subscription["keys"]["auth"],
                payload=text,
                vapid=vapid,
                ttl=60,
            )
            assert result.ok, result
            assert await firefox.next_push() == text
