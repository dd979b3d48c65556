"""A real Firefox connected to node A receives pushes posted to node B."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pywebpush import webpush

from cluster.conftest import PUBLIC_URL, Cluster, at
from support.firefox import FirefoxFactory
from support.service import pywebpush_key
from tidings.webpush import VapidKey

pytestmark = [pytest.mark.firefox, pytest.mark.postgres, pytest.mark.redis]


def send(subscription: dict[str, Any], key: VapidKey, text: str) -> int:
    """pywebpush, with the audience the nodes share (the load balancer's origin)."""
    response = webpush(
        subscription,
        data=text,
        vapid_private_key=pywebpush_key(key),
        vapid_claims={"sub": "mailto:ops@example.com", "aud": PUBLIC_URL},
        ttl=60,
    )
    return int(response.status_code)


@pytest.mark.timeout(120)
async def test_firefox_on_node_a_receives_pushes_sent_to_node_b(
    cluster: Cluster, firefox_client: FirefoxFactory
) -> None:
    a, b = await cluster.start("a", "b")
    key = VapidKey.generate()
    firefox = firefox_client(a.ws_url)
    await firefox.start()
    subscription = await firefox.subscribe(key.public_key_b64, timeout=60)
    assert subscription["endpoint"].startswith(PUBLIC_URL + "/push/")
    via_b = {**subscription, "endpoint": at(b, subscription["endpoint"])}
    for text in ("from node b", "and again ✓"):
        assert await asyncio.to_thread(send, via_b, key, text) == 201
        assert await firefox.next_push(timeout=10) == text
