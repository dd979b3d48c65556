"""Self-test of the npm peer harness (support.node) against web-push-testing.

Proves each sender the later end-to-end tests use (pywebpush, the `web-push`
library through send.js, the `web-push send-notification` CLI) gets a message
through the npm `web-push-testing` push service, which decrypts it.
"""

from __future__ import annotations

import asyncio

import pytest
from pywebpush import WebPushException, webpush

from support.node import (
    VapidKeys,
    WebPushTestingServer,
    node_cli_send,
    node_send,
)

pytestmark = [pytest.mark.node, pytest.mark.timeout(60)]

SUBJECT = "mailto:harness@tidings.invalid"


def subscription_info(subscription: dict[str, object]) -> dict[str, object]:
    """The part of a web-push-testing subscription that senders take."""
    return {"endpoint": subscription["endpoint"], "keys": subscription["keys"]}


async def test_server_binds_loopback_and_hands_out_loopback_endpoints(
    web_push_testing_server: WebPushTestingServer,
) -> None:
    """Endpoints name 127.0.0.1 and the port the server really listens on."""
    server = web_push_testing_server
    assert server.url == f"http://127.0.0.1:{server.port}/"
    subscription = await server.subscribe(VapidKeys.generate().public_key)
    assert subscription["endpoint"] == f"{server.url}notify/{subscription['clientHash']}"
    assert await server.get_notifications(subscription["clientHash"]) == []


async def test_pywebpush_to_web_push_testing(
    web_push_testing_server: WebPushTestingServer,
) -> None:
    """pywebpush delivers when it labels the body application/octet-stream."""
    server = web_push_testing_server
    vapid = VapidKeys.generate()
    subscription = await server.subscribe(vapid.public_key)

    def send(headers: dict[str, str] | None) -> int:
        try:
            response = webpush(
                subscription_info(subscription),
                "from pywebpush ✓",
                vapid_private_key=vapid.private_key,
                vapid_claims={"sub": SUBJECT},
                headers=headers,
                ttl=60,
                timeout=10,
            )
        except WebPushException as error:
            assert error.response is not None
            return int(error.response.status_code)
        return int(response.status_code)

    # pywebpush sends no Content-Type; web-push-testing then never reads the body.
    assert await asyncio.to_thread(send, None) == 400
    status = await asyncio.to_thread(send, {"Content-Type": "application/octet-stream"})
    assert status == 201
    messages = await server.wait_notifications(subscription["clientHash"])
    assert messages == ["from pywebpush ✓"]


async def test_node_send_to_web_push_testing(
    web_push_testing_server: WebPushTestingServer,
) -> None:
    """send.js (the web-push library) delivers aes128gcm and aesgcm, and sees 410."""
    server = web_push_testing_server
    vapid = VapidKeys.generate()
    subscription = await server.subscribe(vapid.public_key)
    info = subscription_info(subscription)

    result = await node_send(
        info, "from web-push ✓", vapid=vapid, ttl=60, urgency="high", topic="harness"
    )
    assert result["ok"], result
    assert result["statusCode"] == 201
    sent = result["request"]["headers"]
    assert sent["Content-Encoding"] == "aes128gcm"
    assert sent["Urgency"] == "high" and sent["Topic"] == "harness" and sent["TTL"] == 60
    assert sent["Authorization"].startswith("vapid t=")

    result = await node_send(info, b"\x00bytes", vapid=vapid, content_encoding="aesgcm")
    assert result["ok"], result
    messages = await server.wait_notifications(subscription["clientHash"], count=2)
    assert messages == ["from web-push ✓", "\x00bytes"]

    await server.expire(subscription["clientHash"])
    result = await node_send(info, "too late", vapid=vapid)
    assert not result["ok"] and result["statusCode"] == 410


async def test_node_cli_send_to_web_push_testing(
    web_push_testing_server: WebPushTestingServer,
) -> None:
    """The web-push CLI delivers over http only with the plain-http preload."""
    server = web_push_testing_server
    vapid = VapidKeys.generate()
    subscription = await server.subscribe(vapid.public_key)
    keys = subscription["keys"]
    common = {"key": keys["p256dh"], "auth": keys["auth"], "vapid": vapid, "ttl": 60}

    # As shipped, the CLI speaks TLS to the http:// endpoint and fails, exiting 0.
    bare = await node_cli_send(subscription["endpoint"], payload="lost", plain_http=False, **common)
    assert bare.returncode == 0 and not bare.ok
    assert "EPROTO" in bare.stdout

    result = await node_cli_send(subscription["endpoint"], payload="from the CLI ✓", **common)
    assert result.ok, result
    messages = await server.wait_notifications(subscription["clientHash"])
    assert messages == ["from the CLI ✓"]

    refused = await node_cli_send(subscription["endpoint"] + "0", payload="nobody", **common)
    assert not refused.ok and refused.status_code == 400
