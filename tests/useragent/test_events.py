"""Push events, their data, and decryption and dispatch logic without sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.useragent import Backoff, PushEvent, PushMessageData, UserAgent
from tidings.useragent.dispatch import open_message
from tidings.useragent.events import ExtendableEvent, run_extendable
from tidings.useragent.transport import Delivery
from tidings.webpush import (
    DecryptionError,
    aesgcm_encrypt,
    b64url_encode,
    encrypt,
    public_key_bytes,
)

from .fakes import FakeTransport


def test_push_message_data_accessors() -> None:
    data = PushMessageData('{"a": [1, "é"]}'.encode())
    assert data.bytes() == '{"a": [1, "é"]}'.encode()
    assert data.text() == '{"a": [1, "é"]}'
    assert data.json() == {"a": [1, "é"]}
    assert bytes(data.array_buffer()) == data.bytes() and data.array_buffer().readonly
    assert PushMessageData(b"\xff").text() == "\ufffd"
    with pytest.raises(ValueError):
        PushMessageData(b"not json").json()


def test_push_message_data_text_and_json_drop_a_utf8_bom() -> None:
    # W3C Push API: text() is WHATWG "UTF-8 decode" and json() "parse JSON from bytes",
    # both of which skip a leading byte order mark; only one BOM goes, and bytes() keeps it.
    data = PushMessageData(b'\xef\xbb\xbf{"a": 1}')
    assert data.text() == '{"a": 1}'
    assert data.json() == {"a": 1}
    assert data.bytes() == b'\xef\xbb\xbf{"a": 1}'
    assert PushMessageData(b"\xef\xbb\xbf\xef\xbb\xbfx").text() == "\ufeffx"
    assert PushMessageData(b"\xef\xbb").text() == "\ufffd"


async def test_wait_until_extends_the_event_and_failures_propagate() -> None:
    steps: list[str] = []

    async def later(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        steps.append(name)

    def handler(event: ExtendableEvent) -> None:
        event.wait_until(later("slow", 0.05))
        event.wait_until(later("fast", 0.0))
        steps.append("handler")

    event = ExtendableEvent()
    await run_extendable(handler, event)
    assert steps == ["handler", "fast", "slow"]
    with pytest.raises(Exception, match="after the event"):
        event.wait_until(later("late", 0))

    async def failing(event: ExtendableEvent) -> None:
        async def boom() -> None:
            raise RuntimeError("boom")

        event.wait_until(boom())

    with pytest.raises(RuntimeError, match="boom"):
        await run_extendable(failing, ExtendableEvent())


def delivery_for(body: bytes, headers: dict[str, str]) -> Delivery:
    return Delivery("h", "m", body, headers)


def test_open_message_both_codings_and_failures() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    auth = b"A" * 16
    public = public_key_bytes(key)
    body = encrypt(b"new coding", public, auth)
    assert open_message(delivery_for(body, {"encoding": "aes128gcm"}), key, auth) == b"new coding"
    old = aesgcm_encrypt(b"old coding", public, auth)
    headers = {
        "encoding": "aesgcm",
        "encryption": old.headers["Encryption"],
        "crypto_key": old.headers["Crypto-Key"],
    }
    assert open_message(delivery_for(old.body, headers), key, auth) == b"old coding"
    assert open_message(delivery_for(b"", {}), key, auth) is None
    with pytest.raises(DecryptionError):
        open_message(delivery_for(body, {"encoding": "aes128gcm"}), key, b"B" * 16)
    with pytest.raises(DecryptionError):
        open_message(delivery_for(body, {"encoding": "rot13"}), key, auth)


async def subscribed_agent(
    tmp_path: Path, transport: FakeTransport, on_push: object
) -> tuple[UserAgent, dict[str, object]]:
    ua = UserAgent(
        "ws://unused/", tmp_path / "ua", transport=transport, backoff=Backoff(0.01, 0.05)
    )
    await ua.start()
    registration = await ua.register("s", on_push=on_push)  # type: ignore[arg-type]
    subscription = await registration.push_manager.subscribe()
    return ua, subscription.to_json()


async def test_duplicates_fire_once_and_are_acked_again(tmp_path: Path) -> None:
    transport = FakeTransport()
    seen: list[str] = []
    release = asyncio.Event()

    async def on_push(event: PushEvent) -> None:
        seen.append(event.data.text() if event.data else "")
        await release.wait()

    ua, sub = await subscribed_agent(tmp_path, transport, on_push)
    handle = transport.subscribed[0][0]
    body = encrypt(b"once", sub["keys"]["p256dh"], sub["keys"]["auth"])  # type: ignore[index]
    message = Delivery(handle, "m1", body, {"encoding": "aes128gcm"})
    transport.current.deliver(message)
    transport.current.deliver(message)  # while the first is still being handled
    await asyncio.sleep(0.05)
    assert seen == ["once"] and transport.acks == []
    release.set()
    await transport.wait_acks(1)
    transport.current.deliver(message)  # after it was handled: acked again, not fired
    acks = await transport.wait_acks(2)
    assert seen == ["once"]
    assert [(a.message_id, a.code) for a in acks] == [("m1", 100), ("m1", 100)]
    await ua.close()


async def test_unknown_channel_is_refused_and_unregistered(tmp_path: Path) -> None:
    transport = FakeTransport()
    ua, _ = await subscribed_agent(tmp_path, transport, lambda e: None)
    transport.current.deliver(Delivery("stranger", "m9", b"", {}))
    acks = await transport.wait_acks(1)
    assert (acks[0].handle, acks[0].code) == ("stranger", 102)
    await asyncio.sleep(0.01)
    assert transport.unsubscribed == ["stranger"]
    await ua.close()


async def test_lost_subscription_is_renewed_with_a_change_event(tmp_path: Path) -> None:
    from tidings.useragent.transport import SubscriptionLost

    transport = FakeTransport()
    ua = UserAgent("ws://unused/", tmp_path / "ua", transport=transport)
    changes: asyncio.Queue[object] = asyncio.Queue()
    async with ua:
        reg = await ua.register("s", on_subscription_change=changes.put_nowait)
        old = await reg.push_manager.subscribe(application_server_key=None)
        transport.current.deliver(SubscriptionLost(transport.subscribed[0][0]))
        event = await asyncio.wait_for(changes.get(), 5)
        assert event.old_subscription == old  # type: ignore[attr-defined]
        new = await reg.push_manager.get_subscription()
        assert new is not None and new == event.new_subscription  # type: ignore[attr-defined]
        assert new.endpoint != old.endpoint and new.get_key("p256dh") != old.get_key("p256dh")
        assert b64url_encode(new.get_key("auth") or b"") == new.to_json()["keys"]["auth"]
