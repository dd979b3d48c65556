"""Firefox's WebSocket protocol without sockets (service/ws_protocol.py): every client frame
parses into a typed message or raises FrameError with a close code, and the frames the
service sends have exactly the fields Firefox reads."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.service import ws_protocol as wp

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"


# ws_protocol: parsing client frames -----------------------------------------------------


def test_empty_object_is_a_ping() -> None:
    assert wp.parse_client_frame("{}") == wp.Ping()
    assert wp.parse_client_frame('{"messageType": "ping"}') == wp.Ping()


def test_message_type_is_case_insensitive() -> None:
    assert isinstance(wp.parse_client_frame('{"messageType": "HELLO"}'), wp.Hello)


def test_hello_uaid_is_lowercased_and_garbage_dropped() -> None:
    hello = wp.parse_client_frame(json.dumps({"messageType": "hello", "uaid": UAID.upper()}))
    assert hello == wp.Hello(UAID, {})
    for garbage in ("xyz", UAID + "0", 5, None, [UAID]):
        frame = json.dumps({"messageType": "hello", "uaid": garbage})
        assert wp.parse_client_frame(frame) == wp.Hello(None, {})


def test_hello_keeps_broadcasts_only_when_an_object() -> None:
    frame = {"messageType": "hello", "broadcasts": {"a": "1"}}
    assert wp.parse_client_frame(json.dumps(frame)) == wp.Hello(None, {"a": "1"})
    frame["broadcasts"] = ["a"]
    assert wp.parse_client_frame(json.dumps(frame)) == wp.Hello(None, {})


def test_register_canonicalises_the_channel_id() -> None:
    frame = {"messageType": "register", "channelID": CHANNEL.upper(), "key": "abc="}
    assert wp.parse_client_frame(json.dumps(frame)) == wp.Register(CHANNEL, "abc=")


@pytest.mark.parametrize("channel_id", ["", "x", 5, None, CHANNEL.replace("-", "")])
def test_register_bad_channel_id_is_an_error_not_a_close(channel_id: object) -> None:
    frame = {"messageType": "register", "channelID": channel_id}
    message = wp.parse_client_frame(json.dumps(frame))
    assert isinstance(message, wp.Register)
    assert message.error is not None


@pytest.mark.parametrize("key", ["", 5, [], {}])
def test_register_bad_key_type_is_an_error(key: object) -> None:
    frame = {"messageType": "register", "channelID": CHANNEL, "key": key}
    message = wp.parse_client_frame(json.dumps(frame))
    assert isinstance(message, wp.Register)
    assert message.error is not None


def test_unregister_keeps_an_integer_code() -> None:
    frame = {"messageType": "unregister", "channelID": CHANNEL, "code": 200}
    assert wp.parse_client_frame(json.dumps(frame)) == wp.Unregister(CHANNEL, 200)
    frame["code"] = True
    assert wp.parse_client_frame(json.dumps(frame)) == wp.Unregister(CHANNEL, None)


def test_ack_skips_bad_updates_and_defaults_the_code() -> None:
    updates = [
        {"channelID": CHANNEL, "version": "v1", "code": 101},
        {"channelID": CHANNEL, "version": "v2"},
        {"channelID": CHANNEL, "version": "v3", "code": True},
        {"channelID": "nope", "version": "v4"},
        {"channelID": CHANNEL, "version": ""},
        {"channelID": CHANNEL, "version": 5},
        "junk",
    ]
    ack = wp.parse_client_frame(json.dumps({"messageType": "ack", "updates": updates}))
    assert ack == wp.Ack(
        (
            wp.AckUpdate(CHANNEL, "v1", 101),
            wp.AckUpdate(CHANNEL, "v2", 100),
            wp.AckUpdate(CHANNEL, "v3", 100),
        )
    )


def _ack_text(kind: str, channel: str, version: str, code: str) -> str:
    """An ack frame as Firefox writes it (compact, one update), of these parts."""
    return (
        '{"messageType":"'
        + kind
        + '","updates":[{"channelID":"'
        + channel
        + '","version":"'
        + version
        + '","code":'
        + code
        + "}]}"
    )


def test_a_compact_ack_is_read_without_the_json_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = "0193a5c0e2f1" + "ab" * 58  # 128 characters
    monkeypatch.setattr(wp.json, "loads", lambda _text: pytest.fail("decoded as JSON"))
    for channel, code in ((CHANNEL, 100), (CHANNEL.upper(), 101), (CHANNEL, 102)):
        ack = wp.parse_client_frame(_ack_text("ack", channel, version, str(code)))
        assert ack == wp.Ack((wp.AckUpdate(CHANNEL, version, code),))


_ACK_PARTS = st.tuples(
    st.sampled_from(["ack", "Ack", " ack", "nack"]),
    st.sampled_from(
        [CHANNEL, CHANNEL.upper(), CHANNEL + "\\n", CHANNEL[:-1], CHANNEL + "0", "", "x"]
    ),
    st.sampled_from(["v1", "a" * 128, "a" * 129, "", "\\u0041", "\\n", '\\"', "\t", "-~._"]),
    st.sampled_from(["100", "101", "102", "103", "99", "0100", "1e2", "true", "-1", "100 "]),
)


@given(_ACK_PARTS)
def test_a_compact_ack_means_what_the_json_decoder_reads(parts: tuple[str, ...]) -> None:
    """The fast path (`_COMPACT_ACK`) takes only frames the JSON path reads the same."""
    text = _ack_text(*parts)
    try:
        decoded = json.loads(text)
    except ValueError:
        with pytest.raises(wp.FrameError):
            wp.parse_client_frame(text)
        return
    if str(decoded["messageType"]).lower() == "ack":
        assert wp.parse_client_frame(text) == wp._parse_ack(decoded)


def test_nack_is_parsed() -> None:
    frame = {"messageType": "nack", "version": "v1", "code": 302}
    assert wp.parse_client_frame(json.dumps(frame)) == wp.Nack("v1", 302)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", wp.CLOSE_INVALID_PAYLOAD),
        ("[]", wp.CLOSE_INVALID_PAYLOAD),
        ("null", wp.CLOSE_INVALID_PAYLOAD),
        ("[" * 50_000, wp.CLOSE_INVALID_PAYLOAD),
        ('{"messageType": 5}', wp.CLOSE_POLICY_VIOLATION),
        ('{"messageType": "nope"}', wp.CLOSE_POLICY_VIOLATION),
        ('{"a": 1}', wp.CLOSE_POLICY_VIOLATION),
        ('{"messageType": "ack", "updates": {}}', wp.CLOSE_POLICY_VIOLATION),
    ],
)
def test_bad_frames_raise_frame_error_with_a_close_code(text: str, code: int) -> None:
    with pytest.raises(wp.FrameError) as raised:
        wp.parse_client_frame(text)
    assert raised.value.code == code


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
MESSAGE_TYPES = st.sampled_from(
    ["hello", "register", "unregister", "ack", "nack", "ping", "broadcast_subscribe", "x"]
)


@given(st.text())
def test_any_text_parses_or_raises_frame_error(text: str) -> None:
    with contextlib.suppress(wp.FrameError):
        wp.parse_client_frame(text)


@given(MESSAGE_TYPES, st.dictionaries(st.text(max_size=12), JSON, max_size=5))
def test_any_json_frame_parses_or_raises_frame_error(kind: str, fields: dict[str, Any]) -> None:
    fields["messageType"] = kind
    with contextlib.suppress(wp.FrameError):
        wp.parse_client_frame(json.dumps(fields))


@given(st.fixed_dictionaries({}, optional={k: JSON for k in ("channelID", "key", "updates")}))
def test_register_and_ack_with_any_fields_never_crash(fields: dict[str, Any]) -> None:
    for kind in ("register", "unregister", "ack"):
        with contextlib.suppress(wp.FrameError):
            wp.parse_client_frame(json.dumps({**fields, "messageType": kind}))


# ws_protocol: frames the service sends ------------------------------------------------


def test_notification_frame_has_exactly_the_firefox_fields() -> None:
    frame = json.loads(wp.notification_frame(CHANNEL, "v1", b"\x00\xff", {"encoding": "x"}))
    assert frame == {
        "messageType": "notification",
        "channelID": CHANNEL,
        "version": "v1",
        "data": "AP8",
        "headers": {"encoding": "x"},
    }
    empty = json.loads(wp.notification_frame(CHANNEL, "v1", b"", {}))
    assert set(empty) == {"messageType", "channelID", "version"}


def test_replies() -> None:
    assert json.loads(wp.hello_reply(UAID)) == {
        "messageType": "hello",
        "uaid": UAID,
        "status": 200,
        "use_webpush": True,
        "broadcasts": {},
    }
    assert json.loads(wp.register_reply(CHANNEL, None, 400)) == {
        "messageType": "register",
        "channelID": CHANNEL,
        "status": 400,
    }
    assert json.loads(wp.unregister_reply(CHANNEL)) == {
        "messageType": "unregister",
        "channelID": CHANNEL,
        "status": 200,
    }
