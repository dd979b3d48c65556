"""The client side of Firefox's WebSocket protocol, as plain strings."""

from __future__ import annotations

import json

import pytest

from tidings.useragent import protocol as fp
from tidings.useragent.backoff import Backoff
from tidings.webpush import b64url_encode


def test_hello_frames_as_firefox_sends_them() -> None:
    assert json.loads(fp.hello_frame(None)) == {
        "messageType": "hello",
        "broadcasts": {},
        "use_webpush": True,
    }
    assert json.loads(fp.hello_frame("ab" * 16))["uaid"] == "ab" * 16


def test_register_unregister_ack_frames() -> None:
    register = json.loads(fp.register_frame("c1", None))
    assert register == {"channelID": "c1", "messageType": "register"}
    assert json.loads(fp.register_frame("c1", "KEY="))["key"] == "KEY="
    assert json.loads(fp.unregister_frame("c1")) == {
        "messageType": "unregister",
        "channelID": "c1",
        "code": 200,
    }
    ack = json.loads(fp.ack_frame([fp.AckUpdate("c1", "v1", 101)]))
    assert ack == {
        "messageType": "ack",
        "updates": [{"channelID": "c1", "version": "v1", "code": 101}],
    }
    assert fp.PING == "{}"


def test_parse_replies() -> None:
    hello = fp.parse_server_frame(
        '{"messageType":"hello","uaid":"u","status":200,"use_webpush":true,"broadcasts":{}}'
    )
    assert hello == fp.HelloReply("u", 200, {})
    reg = fp.parse_server_frame(
        '{"messageType":"register","channelID":"ABC","status":200,"pushEndpoint":"http://x/p"}'
    )
    assert reg == fp.RegisterReply("abc", 200, "http://x/p")
    refused = fp.parse_server_frame('{"messageType":"register","channelID":"abc","status":409}')
    assert refused == fp.RegisterReply("abc", 409, None)
    assert fp.parse_server_frame("{}") == fp.Pong()
    assert fp.parse_server_frame('{"messageType":"broadcast","broadcasts":{}}') == fp.Broadcast({})
    assert fp.parse_server_frame('{"messageType":"future"}') == fp.Unknown("future")
    assert fp.parse_server_frame(
        '{"messageType":"unregister","channelID":"a","status":200}'
    ) == fp.UnregisterReply("a", 200)


def test_parse_notification_padded_or_not() -> None:
    body = bytes(range(40))
    for data in (b64url_encode(body), b64url_encode(body) + "=" * (-len(b64url_encode(body)) % 4)):
        frame = json.dumps(
            {
                "messageType": "notification",
                "channelID": "c",
                "version": "v",
                "data": data,
                "headers": {"encoding": "aes128gcm"},
            }
        )
        assert fp.parse_server_frame(frame) == fp.Notification(
            "c", "v", body, {"encoding": "aes128gcm"}
        )
    empty = fp.parse_server_frame('{"messageType":"notification","channelID":"c","version":"v"}')
    assert empty == fp.Notification("c", "v", b"", {})


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"messageType": 3}',
        '{"messageType":"hello"}',
        '{"messageType":"hello","uaid":"u","status":"200"}',
        '{"messageType":"notification","channelID":"c"}',
        '{"messageType":"notification","channelID":"c","version":"v","data":"%%%"}',
        '{"messageType":"register","status":200}',
    ],
)
def test_malformed_frames_raise(text: str) -> None:
    with pytest.raises(fp.ProtocolError):
        fp.parse_server_frame(text)


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_backoff_doubles_caps_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.5, rng=FixedRandom(0.0))  # type: ignore[arg-type]
    assert [backoff.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next_delay() == 1
    low = Backoff(1.0, 8.0, jitter=0.5, rng=FixedRandom(1.0))  # type: ignore[arg-type]
    assert low.next_delay() == 0.5  # jitter takes off up to half
    many = Backoff(1.0, 8.0)
    for _ in range(10_000):
        assert 4.0 <= many.next_delay() <= 8.0 or many.attempts <= 4
    with pytest.raises(ValueError):
        Backoff(0, 1)
