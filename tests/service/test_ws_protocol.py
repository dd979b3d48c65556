"""Firefox's WebSocket push protocol over a real socket: one test per rule and error path.

Each test runs the service in-process on a free port (the `service` fixture) and talks
to it with `TestAgent`, which speaks the protocol as Firefox does and decrypts what it
receives with real keys.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid
from pathlib import Path

import httpx
import pytest

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service import ws_protocol as wp
from tidings.webpush import (
    VapidKey,
    aesgcm_decrypt,
    aesgcm_encrypt,
    b64url_decode,
    b64url_encode,
    encrypt,
    sign_vapid,
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")
NOTIFICATION_KEYS = {"messageType", "channelID", "version", "data", "headers"}


def encrypted(registration: Registration, text: str) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def push(
    registration: Registration,
    text: str = "hello",
    *,
    ttl: str = "60",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """An aes128gcm push to the registration's endpoint; the response is returned."""
    sent = {"ttl": ttl, "content-encoding": "aes128gcm", **(headers or {})}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            registration.endpoint, content=encrypted(registration, text), headers=sent
        )


async def settle(agent: TestAgent) -> None:
    """A ping round trip: every frame sent before it has been handled by the service."""
    await agent.send("{}")
    assert await agent.receive() == {}


async def reconnect(service: RunningService, agent: TestAgent) -> TestAgent:
    """Close `agent` and connect again as the same user agent, with its registrations."""
    await agent.close()
    again = await service.agent(agent.uaid)
    assert again.uaid == agent.uaid
    again.registrations = dict(agent.registrations)
    return again


async def wait_closed(agent: TestAgent, timeout: float = 5) -> int | None:
    await asyncio.wait_for(agent.closed.wait(), timeout)
    return agent.close_code


# hello ----------------------------------------------------------------------------------


async def test_hello_assigns_a_new_uaid(service: RunningService) -> None:
    agent = TestAgent(service.ws_url)
    await agent.connect(hello=False)
    reply = await agent.hello()
    assert reply == {
        "messageType": "hello",
        "uaid": reply["uaid"],
        "status": 200,
        "use_webpush": True,
        "broadcasts": {},
    }
    assert HEX32.match(reply["uaid"])
    await agent.close()


async def test_hello_keeps_a_known_uaid(service: RunningService) -> None:
    first = await service.agent()
    await first.register()
    await first.close()
    second = await service.agent(first.uaid)
    assert second.uaid == first.uaid
    await second.close()


async def test_hello_with_unknown_uaid_gets_a_new_one(service: RunningService) -> None:
    unknown = secrets.token_hex(16)
    agent = await service.agent(unknown)
    assert agent.uaid != unknown
    assert HEX32.match(agent.uaid or "")
    await agent.close()


async def test_uaid_without_subscription_is_not_kept(service: RunningService) -> None:
    first = await service.agent()
    await first.close()
    second = await service.agent(first.uaid)
    assert second.uaid != first.uaid
    await second.close()


@pytest.mark.parametrize("garbage", ["not-a-uaid", "g" * 32, "0" * 31, "", 12345, None, ["x"]])
async def test_hello_with_garbage_uaid_gets_a_new_one(
    service: RunningService, garbage: object
) -> None:
    agent = TestAgent(service.ws_url)
    await agent.connect(hello=False)
    await agent.send({"messageType": "hello", "uaid": garbage, "use_webpush": True})
    reply = await agent.expect("hello")
    assert reply["status"] == 200
    assert HEX32.match(reply["uaid"])
    await agent.close()


async def test_hello_delivers_stored_messages_in_order(service: RunningService) -> None:
    agent = await service.agent()
    one = await agent.register()
    two = await agent.register()
    await agent.close()
    sent = [(one, "first"), (two, "second"), (one, "third"), (two, "fourth")]
    for registration, text in sent:
        assert (await push(registration, text)).status_code == 201
    again = await reconnect(service, agent)
    for registration, text in sent:
        notification = await again.next_notification()
        assert notification.channel_id == registration.channel_id
        assert notification.plaintext == text.encode()
    await again.no_frame()
    await again.close()


async def test_hello_timeout_closes_the_socket(tmp_path: Path) -> None:
    async with running_service(tmp_path, hello_timeout=0.5) as running:
        agent = TestAgent(running.ws_url)
        await agent.connect(hello=False)
        assert await wait_closed(agent, 3) == wp.CLOSE_POLICY_VIOLATION


async def test_second_hello_closes_the_socket(service: RunningService) -> None:
    agent = await service.agent()
    await agent.send({"messageType": "hello", "uaid": agent.uaid, "use_webpush": True})
    assert await wait_closed(agent) == wp.CLOSE_POLICY_VIOLATION


@pytest.mark.parametrize(
    "frame",
    [
        {"messageType": "register", "channelID": str(uuid.uuid4())},
        {"messageType": "ack", "updates": []},
        {"messageType": "broadcast_subscribe", "broadcasts": {}},
        {},
    ],
    ids=["register", "ack", "broadcast_subscribe", "ping"],
)
async def test_frame_before_hello_closes_the_socket(
    service: RunningService, frame: dict[str, object]
) -> None:
    agent = TestAgent(service.ws_url)
    await agent.connect(hello=False)
    await agent.send(frame)
    assert await wait_closed(agent) == wp.CLOSE_POLICY_VIOLATION


async def test_new_connection_replaces_the_old_one(service: RunningService) -> None:
    first = await service.agent()
    registration = await first.register()
    second = await service.agent(first.uaid)
    assert await wait_closed(first) == wp.CLOSE_REPLACED
    second.registrations[registration.channel_id] = registration
    assert (await push(registration, "to the new one")).status_code == 201
    assert (await second.next_notification()).plaintext == b"to the new one"
    await second.close()


# register -------------------------------------------------------------------------------


async def test_register_returns_an_endpoint(service: RunningService) -> None:
    agent = await service.agent()
    channel_id = str(uuid.uuid4())
    await agent.send({"messageType": "register", "channelID": channel_id})
    reply = await agent.expect("register")
    assert reply["status"] == 200
    assert reply["channelID"] == channel_id
    assert reply["pushEndpoint"].startswith(service.url + "/push/")
    await agent.close()


async def test_register_uppercase_channel_id_is_answered_in_lowercase(
    service: RunningService,
) -> None:
    agent = await service.agent()
    channel_id = str(uuid.uuid4())
    await agent.send({"messageType": "register", "channelID": channel_id.upper()})
    reply = await agent.expect("register")
    assert reply["status"] == 200
    assert reply["channelID"] == channel_id
    await agent.close()


async def test_register_with_padded_key_is_restricted(service: RunningService) -> None:
    key = VapidKey.generate()
    padded = key.public_key_b64 + "=" * (-len(key.public_key_b64) % 4)
    assert padded.endswith("=")  # 65 bytes never fill whole base64 quanta
    agent = await service.agent()
    registration = await agent.register(padded)
    unsigned = await push(registration)
    assert unsigned.status_code == 401
    vapid = sign_vapid(key, registration.endpoint, "mailto:ops@example.com")
    signed = await push(registration, "signed", headers={"authorization": vapid.authorization})
    assert signed.status_code == 201, signed.text
    assert (await agent.next_notification()).plaintext == b"signed"
    await agent.close()


async def test_register_with_unpadded_key_is_restricted(service: RunningService) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    assert (await push(registration)).status_code == 401
    await agent.close()


async def test_register_same_channel_twice_keeps_one_subscription(
    service: RunningService,
) -> None:
    agent = await service.agent()
    channel_id = str(uuid.uuid4())
    for _ in range(2):
        await agent.send({"messageType": "register", "channelID": channel_id})
        assert (await agent.expect("register"))["status"] == 200
    assert await service.service.store.count_subscriptions(agent.uaid) == 1
    await agent.close()


async def test_register_same_channel_with_another_key_is_refused(
    service: RunningService,
) -> None:
    agent = await service.agent()
    registration = await agent.register(VapidKey.generate().public_key_b64)
    other = VapidKey.generate().public_key_b64
    await agent.send(
        {"messageType": "register", "channelID": registration.channel_id, "key": other}
    )
    reply = await agent.expect("register")
    assert reply["status"] == 409
    assert "pushEndpoint" not in reply
    await agent.close()


@pytest.mark.parametrize(
    "channel_id",
    ["not-a-uuid", "", 42, None, str(uuid.uuid4())[:-1], str(uuid.uuid4()).replace("-", "")],
)
async def test_register_bad_channel_id_is_400_and_connection_stays(
    service: RunningService, channel_id: object
) -> None:
    agent = await service.agent()
    await agent.send({"messageType": "register", "channelID": channel_id})
    reply = await agent.expect("register")
    assert reply["status"] == 400
    assert "pushEndpoint" not in reply
    await agent.register()  # the connection is still usable
    await agent.close()


def _not_a_point() -> str:
    raw = bytearray(VapidKey.generate().public_key_bytes)
    raw[-1] ^= 0x01  # (x, y+1) is not on the curve
    return b64url_encode(bytes(raw))


@pytest.mark.parametrize(
    "key",
    [
        "not base64 !!",
        "é" * 87,
        _not_a_point(),
        b64url_encode(b"\x04" + b"\x01" * 31),  # wrong length
        b64url_encode(VapidKey.generate().public_key_bytes[:33]),  # compressed size
        "",
        17,
        ["key"],
    ],
    ids=["not-base64", "non-ascii", "not-a-point", "short", "33-bytes", "empty", "int", "list"],
)
async def test_register_bad_key_is_400_and_connection_stays(
    service: RunningService, key: object
) -> None:
    agent = await service.agent()
    channel_id = str(uuid.uuid4())
    await agent.send({"messageType": "register", "channelID": channel_id, "key": key})
    reply = await agent.expect("register")
    assert reply["status"] == 400
    assert "pushEndpoint" not in reply
    await agent.register()
    await agent.close()


# unregister -----------------------------------------------------------------------------


async def test_unregister_deletes_subscription_and_messages(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    kept = await agent.register()
    assert (await push(registration, "dropped")).status_code == 201
    await agent.next_notification(ack=False)  # delivered, not acknowledged: still stored
    reply = await agent.unregister(registration)
    assert reply == {
        "messageType": "unregister",
        "channelID": registration.channel_id,
        "status": 200,
    }
    assert (await push(kept, "kept")).status_code == 201
    again = await reconnect(service, agent)
    assert (await again.next_notification()).plaintext == b"kept"  # only the kept one
    await again.no_frame()
    gone = await push(registration, "after unregister")
    assert gone.status_code == 410
    assert gone.headers["content-type"] == "application/json"
    assert gone.json() == {
        "code": 410,
        "errno": 103,
        "error": "Gone",
        "message": gone.json()["message"],
    }
    assert (await push(registration, "ttl 0", ttl="0")).status_code == 410
    await again.close()


async def test_unregister_bad_channel_id_is_400(service: RunningService) -> None:
    agent = await service.agent()
    await agent.send({"messageType": "unregister", "channelID": "nope", "code": 200})
    reply = await agent.expect("unregister")
    assert reply["status"] == 400
    await settle(agent)
    await agent.close()


async def test_unregister_unknown_channel_is_answered(service: RunningService) -> None:
    agent = await service.agent()
    channel_id = str(uuid.uuid4())
    await agent.send({"messageType": "unregister", "channelID": channel_id, "code": 200})
    reply = await agent.expect("unregister")
    assert reply == {"messageType": "unregister", "channelID": channel_id, "status": 200}
    await agent.close()


# notification ---------------------------------------------------------------------------


async def test_notification_frame_carries_nothing_else(service: RunningService) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    vapid = sign_vapid(key, registration.endpoint, "mailto:ops@example.com")
    response = await push(
        registration,
        "secret",
        ttl="120",
        headers={
            "authorization": vapid.authorization,
            "topic": "weather",
            "urgency": "high",
        },
    )
    assert response.status_code == 201, response.text
    notification = await agent.next_notification()
    frame = notification.frame
    assert set(frame) == NOTIFICATION_KEYS
    assert frame["messageType"] == "notification"
    assert frame["channelID"] == registration.channel_id
    assert frame["headers"] == {"encoding": "aes128gcm"}
    assert notification.plaintext == b"secret"
    raw = json.dumps(frame)
    # (The TTL is checked by the exact key set above: "120" as a substring could occur
    # by chance in the random ids and ciphertext.)
    for leaked in (vapid.token, key.public_key_b64, "weather", '"high"'):
        assert leaked not in raw
    await agent.close()


async def test_aesgcm_notification_has_no_vapid_key(service: RunningService) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    keys = registration.subscription_info()["keys"]
    message = aesgcm_encrypt(b"legacy coding", keys["p256dh"], keys["auth"])
    vapid = sign_vapid(key, registration.endpoint, "mailto:ops@example.com")
    headers = {
        "ttl": "60",
        "content-encoding": "aesgcm",
        "encryption": message.headers["Encryption"],
        "crypto-key": f"{message.headers['Crypto-Key']};{vapid.crypto_key}",
        "authorization": vapid.legacy_authorization,
    }
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(registration.endpoint, content=message.body, headers=headers)
    assert response.status_code == 201, response.text
    notification = await agent.next_notification()
    frame = notification.frame
    assert set(frame) == NOTIFICATION_KEYS
    assert set(frame["headers"]) == {"encoding", "encryption", "crypto_key"}
    assert frame["headers"]["encoding"] == "aesgcm"
    assert "p256ecdsa" not in frame["headers"]["crypto_key"]
    assert key.public_key_b64 not in json.dumps(frame)
    plaintext = aesgcm_decrypt(
        b64url_decode(frame["data"]),
        registration.private_key,
        registration.auth,
        encryption=frame["headers"]["encryption"],
        crypto_key=frame["headers"]["crypto_key"],
    )
    assert plaintext == b"legacy coding"
    await agent.close()


async def test_push_without_body_has_no_data(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(registration.endpoint, headers={"ttl": "60"})
    assert response.status_code == 201, response.text
    frame = (await agent.next_notification()).frame
    assert set(frame) == {"messageType", "channelID", "version"}
    await agent.close()


# ack, nack, ping, broadcasts ------------------------------------------------------------


@pytest.mark.parametrize("code", [100, 101, 102])
async def test_ack_deletes_the_message(service: RunningService, code: int) -> None:
    agent = await service.agent()
    registration = await agent.register()
    assert (await push(registration, "once")).status_code == 201
    notification = await agent.next_notification(ack=False)
    await agent.ack(notification.frame, code)
    await settle(agent)
    assert await service.service.store.count_messages() == 0
    again = await reconnect(service, agent)
    await again.no_frame()
    await again.close()


async def test_unacked_messages_come_again_in_order(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    for text in ("a", "b", "c"):
        assert (await push(registration, text)).status_code == 201
    first = [await agent.next_notification(ack=False) for _ in range(3)]
    assert [n.plaintext for n in first] == [b"a", b"b", b"c"]
    again = await reconnect(service, agent)
    second = [await again.next_notification(ack=False) for _ in range(3)]
    assert [n.version for n in second] == [n.version for n in first]
    assert [n.plaintext for n in second] == [b"a", b"b", b"c"]
    await again.ack(second[1].frame)
    await settle(again)
    third = await reconnect(service, again)
    assert [(await third.next_notification()).plaintext for _ in range(2)] == [b"a", b"c"]
    await third.no_frame()
    await third.close()


async def test_ack_of_unknown_version_is_harmless(service: RunningService) -> None:
    agent = await service.agent()
    update = {"channelID": str(uuid.uuid4()), "version": "nope", "code": 100}
    await agent.send({"messageType": "ack", "updates": [update, "junk", {"version": 5}]})
    await settle(agent)
    await agent.close()


async def test_nack_is_accepted(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    assert (await push(registration, "refused")).status_code == 201
    notification = await agent.next_notification(ack=False)
    await agent.send({"messageType": "nack", "version": notification.version, "code": 302})
    await settle(agent)
    assert not agent.closed.is_set()
    await agent.close()


async def test_ping_is_answered_with_ping(service: RunningService) -> None:
    agent = await service.agent()
    await agent.send("{}")
    assert await agent.receive() == {}
    await agent.send({"messageType": "ping"})
    assert await agent.receive() == {}
    await agent.close()


async def test_broadcast_subscribe_to_an_unknown_id_is_an_error(service: RunningService) -> None:
    agent = await service.agent()
    await agent.send(
        {
            "messageType": "broadcast_subscribe",
            "broadcasts": {"remote-settings/monitor_changes": '"0"'},
        }
    )
    reply = await agent.expect("broadcast")
    errors = {"remote-settings/monitor_changes": "Broadcast not found"}
    assert reply == {"messageType": "broadcast", "broadcasts": {"errors": errors}}
    await agent.close()


# bad frames -----------------------------------------------------------------------------


BAD_FRAMES: list[tuple[str, str | bytes, int]] = [
    ("not-json", "this is not json", wp.CLOSE_INVALID_PAYLOAD),
    ("json-array", "[1, 2, 3]", wp.CLOSE_INVALID_PAYLOAD),
    ("json-string", '"hello"', wp.CLOSE_INVALID_PAYLOAD),
    ("deep-nesting", "[" * 10_000 + "]" * 10_000, wp.CLOSE_INVALID_PAYLOAD),
    ("unknown-type", '{"messageType": "launch_missiles"}', wp.CLOSE_POLICY_VIOLATION),
    ("no-type", '{"channelID": "x"}', wp.CLOSE_POLICY_VIOLATION),
    ("ack-without-updates", '{"messageType": "ack"}', wp.CLOSE_POLICY_VIOLATION),
    ("binary", b"\x00\x01binary", wp.CLOSE_UNSUPPORTED_DATA),
    ("huge", '{"messageType": "ping", "x": "' + "x" * (64 * 1024) + '"}', wp.CLOSE_TOO_BIG),
]


@pytest.mark.parametrize(
    ("frame", "close_code"),
    [(frame, code) for _, frame, code in BAD_FRAMES],
    ids=[name for name, _, _ in BAD_FRAMES],
)
async def test_bad_frame_closes_with_a_clear_code(
    service: RunningService, frame: str | bytes, close_code: int
) -> None:
    bystander = await service.agent()
    bystander_registration = await bystander.register()
    agent = await service.agent()
    await agent.register()
    await agent.ws.send(frame)
    assert await wait_closed(agent) == close_code
    # One bad client never affects another.
    assert (await push(bystander_registration, "still here")).status_code == 201
    assert (await bystander.next_notification()).plaintext == b"still here"
    await settle(bystander)
    await bystander.close()


# handshake ------------------------------------------------------------------------------


async def test_firefox_subprotocol_is_accepted_and_compression_declined(
    service: RunningService,
) -> None:
    import websockets

    async with websockets.connect(
        service.ws_url, subprotocols=["push-notification"], compression="deflate", open_timeout=5
    ) as connection:
        assert connection.subprotocol == "push-notification"
        assert connection.protocol.extensions == []
        await connection.send(json.dumps({"messageType": "hello", "use_webpush": True}))
        assert json.loads(await asyncio.wait_for(connection.recv(), 5))["status"] == 200
