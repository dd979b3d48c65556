"""Self-test of the Firefox harness against a minimal in-test WebSocket push server.

Proves, before Tidings' own push service exists, that `support.firefox` can start a
real Firefox, subscribe it, deliver an RFC 8291 message that its service worker
decrypts, and see the `ack`; and records the exact frames Firefox sends (printed
with `pytest -s`; summarised in docs/firefox-notes.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import http_ece
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.asyncio.server import Server, ServerConnection, serve

from support.firefox import FirefoxError, FirefoxFactory, FirefoxPushClient

pytestmark = [pytest.mark.firefox, pytest.mark.timeout(240)]


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data: bytes) -> str:
    """Encode base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def vapid_public_key() -> str:
    """A fresh P-256 public key, raw uncompressed point, base64url: a VAPID key."""
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(raw)


def encrypt_for(subscription: dict[str, Any], plaintext: bytes) -> bytes:
    """An RFC 8291 aes128gcm body for the subscription's p256dh and auth keys."""
    sender_key = ec.generate_private_key(ec.SECP256R1())
    return http_ece.encrypt(
        plaintext,
        private_key=sender_key,
        dh=b64url_decode(subscription["keys"]["p256dh"]),
        auth_secret=b64url_decode(subscription["keys"]["auth"]),
        version="aes128gcm",
    )


class MiniPushServer:
    """Just enough of the WebSocket push protocol (firefox.md) to serve one Firefox.

    Records every frame in both directions with its time, so the test can assert on
    what Firefox sent and print the exchange.
    """

    def __init__(self) -> None:
        self.frames: list[tuple[float, str, str]] = []  # (time, "->"/"<-", text)
        self.connections: list[dict[str, Any]] = []
        self.uaids: set[str] = set()
        self.current: ServerConnection | None = None
        self._server: Server | None = None
        self._changed = asyncio.Condition()
        self.t0 = time.monotonic()

    @property
    def url(self) -> str:
        """The ws:// URL to give Firefox as dom.push.serverURL."""
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def __aenter__(self) -> MiniPushServer:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=["push-notification"],  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
            close_timeout=1,  # Firefox does not answer a server's Close frame (see notes)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _record(self, direction: str, text: str) -> None:
        async with self._changed:
            self.frames.append((time.monotonic(), direction, text))
            self._changed.notify_all()

    async def send(self, message: dict[str, Any] | str) -> None:
        """Send one frame to the connected Firefox."""
        assert self.current is not None, "Firefox is not connected"
        text = message if isinstance(message, str) else json.dumps(message)
        await self._record("<-", text)
        await self.current.send(text)

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        self.connections.append(
            {
                "index": len(self.connections),
                "at": time.monotonic(),
                "path": request.path,
                "protocol": request.headers.get("Sec-WebSocket-Protocol"),
                "extensions": request.headers.get("Sec-WebSocket-Extensions"),
                "user_agent": request.headers.get("User-Agent"),
            }
        )
        self.current = ws
        try:
            async for raw in ws:
                text = raw if isinstance(raw, str) else raw.decode()
                await self._record("->", text)
                message = json.loads(text)
                if message == {}:
                    await self.send("{}")
                    continue
                kind = message.get("messageType")
                if kind == "hello":
                    uaid = message.get("uaid") or uuid.uuid4().hex
                    self.uaids.add(uaid)
                    await self.send(
                        {
                            "messageType": "hello",
                            "uaid": uaid,
                            "status": 200,
                            "use_webpush": True,
                            "broadcasts": {},
                        }
                    )
                elif kind == "register":
                    channel = message["channelID"]
                    await self.send(
                        {
                            "messageType": "register",
                            "channelID": channel,
                            "status": 200,
                            "pushEndpoint": f"http://127.0.0.1:1/wpush/{channel}",
                        }
                    )
                elif kind == "unregister":
                    await self.send(
                        {
                            "messageType": "unregister",
                            "channelID": message["channelID"],
                            "status": 200,
                        }
                    )
        except Exception:  # connection dropped by Firefox's shutdown
            pass
        finally:
            self.connections[-1]["close_code"] = ws.close_code
            self.connections[-1]["close_reason"] = ws.close_reason
            if self.current is ws:
                self.current = None

    def sent(self, kind: str) -> list[dict[str, Any]]:
        """Frames of one messageType that Firefox sent, in order."""
        out = []
        for _, direction, text in self.frames:
            if direction == "->" and text != "{}":
                message = json.loads(text)
                if message.get("messageType") == kind:
                    out.append(message)
        return out

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 30) -> dict[str, Any]:
        """Wait until Firefox has sent `count` frames of `kind`; return the last."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(self.sent(kind)) >= count), timeout
                )
            except TimeoutError:
                raise AssertionError(
                    f"Firefox sent no {kind} #{count} in {timeout} s; frames:\n" + self.transcript()
                ) from None
        return self.sent(kind)[count - 1]

    def transcript(self) -> str:
        """The exchange so far, one frame a line, with seconds since start."""
        return "\n".join(f"{t - self.t0:7.2f}s {d} {text}" for t, d, text in self.frames)


async def start_and_subscribe(
    firefox: FirefoxPushClient, server: MiniPushServer, key: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Start Firefox, subscribe after its hello; return the subscription and timings."""
    t_start = time.monotonic()
    await firefox.start()
    await server.wait_for("hello", count=len(server.sent("hello")) + 1, timeout=45)
    t_hello = time.monotonic()
    subscription = await firefox.subscribe(key, timeout=60)
    t_sub = time.monotonic()
    return subscription, {
        "hello_after_s": round(t_hello - t_start, 2),
        "subscribed_after_s": round(t_sub - t_start, 2),
    }


async def push_and_check(
    firefox: FirefoxPushClient,
    server: MiniPushServer,
    subscription: dict[str, Any],
    channel: str,
    version: str,
    plaintext: str,
) -> dict[str, Any]:
    """Send one encrypted notification frame; assert the worker saw it and Firefox acked."""
    body = encrypt_for(subscription, plaintext.encode())
    acks_before = len(server.sent("ack"))
    await server.send(
        {
            "messageType": "notification",
            "channelID": channel,
            "version": version,
            "data": b64url(body),
            "headers": {"encoding": "aes128gcm"},
        }
    )
    report = await firefox.next_push_report(timeout=30)
    assert report["text"] == plaintext
    assert report["notificationError"] is None, report
    ack = await server.wait_for("ack", count=acks_before + 1, timeout=15)
    assert ack["updates"] == [{"channelID": channel, "version": version, "code": 100}]
    return report


async def test_firefox_subscribes_receives_and_acks(firefox_client: FirefoxFactory) -> None:
    """Hello, register, notification (decrypted by the worker), ack, unregister."""
    async with MiniPushServer() as server:
        firefox = firefox_client(server.url)
        key = vapid_public_key()
        subscription, timings = await start_and_subscribe(firefox, server, key)

        hello = server.sent("hello")[0]
        assert hello["use_webpush"] is True
        assert "uaid" not in hello  # a fresh profile has none to send
        register = server.sent("register")[0]
        channel = register["channelID"]
        assert uuid.UUID(channel).hex == channel.replace("-", "")
        assert b64url_decode(register["key"]) == b64url_decode(key)
        assert subscription["endpoint"] == f"http://127.0.0.1:1/wpush/{channel}"
        assert len(b64url_decode(subscription["keys"]["p256dh"])) == 65
        assert len(b64url_decode(subscription["keys"]["auth"])) == 16

        report = await push_and_check(
            firefox, server, subscription, channel, "v1", "Hello from the harness ✓"
        )
        assert any(n["body"] == "Hello from the harness ✓" for n in report["notifications"])

        assert await firefox.unsubscribe() is True
        unregister = await server.wait_for("unregister", timeout=15)
        assert unregister["channelID"] == channel
        assert await firefox.get_subscription() is None

        # A refusal in the page surfaces at once, with the browser's own words.
        with pytest.raises(FirefoxError, match="InvalidAccessError"):
            await firefox.subscribe("AAAA", timeout=20)

        await firefox.stop()
        print("\nconnection:", server.connections[0])
        print("timings:", timings)
        print(server.transcript())


async def test_firefox_restart_keeps_uaid_and_subscription(
    firefox_client: FirefoxFactory,
) -> None:
    """Same profile after a restart: Firefox sends its uaid back and the push still works."""
    async with MiniPushServer() as server:
        firefox = firefox_client(server.url)
        subscription, timings = await start_and_subscribe(firefox, server, vapid_public_key())
        channel = server.sent("register")[0]["channelID"]
        uaid = next(iter(server.uaids))

        await firefox.restart()
        second_hello = await server.wait_for("hello", count=2, timeout=45)
        assert second_hello.get("uaid") == uaid
        assert len(server.connections) == 2
        # A clean quit sends a Close frame without a status code (1005 on our side).
        assert server.connections[0]["close_code"] == 1005
        assert await firefox.get_subscription() == subscription
        await push_and_check(firefox, server, subscription, channel, "after-restart", "again")
        assert len(server.sent("register")) == 1  # no re-registration on reconnect

        await firefox.stop()
        print("\ntimings:", timings)
        print("second hello:", second_hello)
        print("connections:", server.connections)
        print(server.transcript())
