"""Unit tests of the service's sans-I/O parts: frames, push checks, tokens, key file, config.

No sockets here: each part takes bytes or strings and returns values or raises its own
error type, so the rules (and the absence of any other exception) are checked directly,
with Hypothesis where any input must be survivable.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.service import ws_protocol as wp
from tidings.service.config import ServiceConfig, load_config
from tidings.service.errors import Errno, ServiceError
from tidings.service.http import websocket as ws
from tidings.service.keyfile import KeyFileError, load_sealer, read_keys, write_keys
from tidings.service.push_request import check_push
from tidings.service.store.sqlite import SQLiteStore
from tidings.service.tokens import (
    EndpointRef,
    MessageRef,
    TokenError,
    TokenKind,
    TokenSealer,
    vapid_key_hash,
)
from tidings.webpush import b64url_decode, b64url_encode, encrypt
from tidings.webpush.keys import public_key_bytes

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


# push_request ---------------------------------------------------------------------------


def _aes128gcm_body() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return encrypt(b"x", public_key_bytes(key.public_key()), os.urandom(16))


def test_check_push_facts() -> None:
    facts = check_push(
        {"ttl": "30", "urgency": "low", "topic": "t1", "content-encoding": "aes128gcm"},
        _aes128gcm_body(),
        max_body=4096,
    )
    assert facts.ttl == 30
    assert str(facts.urgency) == "low"
    assert facts.topic == "t1"
    assert facts.delivery_headers == {"encoding": "aes128gcm"}


def test_empty_body_needs_no_encoding() -> None:
    facts = check_push({"ttl": "0"}, b"", max_body=4096)
    assert facts.delivery_headers == {}


@pytest.mark.parametrize(
    ("crypto_key", "forwarded"),
    [
        ("dh=AAA;p256ecdsa=BBB", "dh=AAA"),
        ("p256ecdsa=BBB;dh=AAA", "dh=AAA"),
        ("dh=AAA, p256ecdsa=BBB", "dh=AAA"),
        ("P256ECDSA=BBB; dh=AAA", "dh=AAA"),
        ("keyid=p256dh;dh=AAA", "keyid=p256dh;dh=AAA"),
    ],
)
def test_aesgcm_crypto_key_loses_the_vapid_key(crypto_key: str, forwarded: str) -> None:
    headers = {
        "ttl": "5",
        "content-encoding": "aesgcm",
        "encryption": "salt=SSS",
        "crypto-key": crypto_key,
    }
    facts = check_push(headers, b"\x00" * 40, max_body=4096)
    assert facts.delivery_headers == {
        "encoding": "aesgcm",
        "encryption": "salt=SSS",
        "crypto_key": forwarded,
    }


@pytest.mark.parametrize(
    ("headers", "errno"),
    [
        ({}, Errno.BAD_TTL),
        ({"ttl": "-1"}, Errno.BAD_TTL),
        ({"ttl": "1", "urgency": "soon"}, Errno.BAD_URGENCY),
        ({"ttl": "1", "topic": "a" * 33}, Errno.BAD_TOPIC),
        ({"ttl": "1", "content-encoding": "br"}, Errno.BAD_ENCODING),
        ({"ttl": "1"}, Errno.BAD_ENCODING),
        ({"ttl": "1", "content-encoding": "aesgcm", "crypto-key": "dh=A"}, Errno.BAD_ENCODING),
        ({"ttl": "1", "content-encoding": "aesgcm", "encryption": "salt=A"}, Errno.BAD_ENCODING),
        ({"ttl": "1", "content-encoding": "aes128gcm"}, Errno.BAD_BODY),
    ],
)
def test_check_push_refusals(headers: dict[str, str], errno: Errno) -> None:
    with pytest.raises(ServiceError) as raised:
        check_push(headers, b"\x00" * 30, max_body=4096)
    assert raised.value.status == 400
    assert raised.value.errno == errno


def test_check_push_413_only_above_the_limit() -> None:
    with pytest.raises(ServiceError) as raised:
        check_push({"ttl": "1"}, b"\x00" * 4097, max_body=4096)
    assert raised.value.status == 413


HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@given(
    st.dictionaries(
        st.sampled_from(
            ["ttl", "urgency", "topic", "content-encoding", "encryption", "crypto-key"]
        ),
        HEADER_VALUES,
    ),
    st.binary(max_size=200),
)
def test_check_push_raises_only_service_errors(headers: dict[str, str], body: bytes) -> None:
    try:
        check_push(headers, body, max_body=4096)
    except ServiceError as error:
        assert error.status in (400, 413)
        json.loads(error.body())


def test_error_body_is_the_documented_document() -> None:
    error = ServiceError(410, Errno.SUBSCRIPTION_GONE, "gone")
    assert json.loads(error.body()) == {
        "code": 410,
        "errno": 103,
        "error": "Gone",
        "message": "gone",
    }


def test_errno_values_are_unique() -> None:
    values = [int(member) for member in Errno]
    assert len(values) == len(set(values))


# tokens ---------------------------------------------------------------------------------


@pytest.fixture
def sealer() -> TokenSealer:
    return TokenSealer({1: TokenSealer.new_key()}, 1)


def test_endpoint_tokens_round_trip(sealer: TokenSealer) -> None:
    plain = EndpointRef(UAID, CHANNEL, None)
    restricted = EndpointRef(UAID, CHANNEL, vapid_key_hash(b"\x04" + b"k" * 64))
    for ref in (plain, restricted):
        assert sealer.open_endpoint(sealer.seal_endpoint(ref)) == ref


def test_message_tokens_round_trip(sealer: TokenSealer) -> None:
    ref = MessageRef(UAID, CHANNEL, "ff" * 16)
    assert sealer.open_message(sealer.seal_message(ref)) == ref


def test_endpoint_tokens_are_stable_per_subscription_and_unlinkable_across(
    sealer: TokenSealer,
) -> None:
    ref = EndpointRef(UAID, CHANNEL, None)
    assert sealer.seal_endpoint(ref) == sealer.seal_endpoint(ref)  # one push resource URL
    other = EndpointRef(UAID, "0" * 8 + CHANNEL[8:], None)
    raw = b64url_decode(sealer.seal_endpoint(ref))
    other_raw = b64url_decode(sealer.seal_endpoint(other))
    # Two subscriptions of one user agent share nothing beyond the kind and key id.
    assert raw[:2] == other_raw[:2]
    assert raw[2:14] != other_raw[2:14] and raw[14:] != other_raw[14:]


def test_a_message_token_never_opens_as_an_endpoint(sealer: TokenSealer) -> None:
    message = sealer.seal_message(MessageRef(UAID, CHANNEL, "ff" * 16))
    endpoint = sealer.seal_endpoint(EndpointRef(UAID, CHANNEL, None))
    with pytest.raises(TokenError):
        sealer.open_endpoint(message)
    with pytest.raises(TokenError):
        sealer.open_message(endpoint)


def test_a_token_with_its_kind_byte_changed_does_not_open(sealer: TokenSealer) -> None:
    raw = bytearray(b64url_decode(sealer.seal_message(MessageRef(UAID, CHANNEL, "ff" * 16))))
    raw[0] = TokenKind.ENDPOINT
    with pytest.raises(TokenError):
        sealer.open_endpoint(b64url_encode(bytes(raw)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_change_to_a_token_is_refused(sealer: TokenSealer, data: st.DataObject) -> None:
    token = sealer.seal_endpoint(EndpointRef(UAID, CHANNEL, None))
    raw = bytearray(b64url_decode(token))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(TokenError):
        sealer.open_endpoint(b64url_encode(bytes(raw)))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=600))
def test_any_text_opens_or_raises_token_error(sealer: TokenSealer, text: str) -> None:
    for opener in (sealer.open_endpoint, sealer.open_message):
        with contextlib.suppress(TokenError):
            opener(text)


def test_tokens_of_another_key_do_not_open(sealer: TokenSealer) -> None:
    other = TokenSealer({1: TokenSealer.new_key()}, 1)
    with pytest.raises(TokenError):
        sealer.open_endpoint(other.seal_endpoint(EndpointRef(UAID, CHANNEL, None)))


def test_rotation_opens_tokens_of_every_held_key() -> None:
    old_key, new_key = TokenSealer.new_key(), TokenSealer.new_key()
    old = TokenSealer({1: old_key}, 1)
    rotated = TokenSealer({1: old_key, 2: new_key}, 2)
    ref = EndpointRef(UAID, CHANNEL, None)
    assert rotated.open_endpoint(old.seal_endpoint(ref)) == ref
    assert b64url_decode(rotated.seal_endpoint(ref))[1] == 2
    with pytest.raises(TokenError):
        old.open_endpoint(rotated.seal_endpoint(ref))


@pytest.mark.parametrize(
    ("keys", "current"),
    [({1: b"short"}, 1), ({0: b"k" * 32}, 0), ({256: b"k" * 32}, 256), ({1: b"k" * 32}, 2)],
)
def test_sealer_refuses_bad_keys(keys: dict[int, bytes], current: int) -> None:
    with pytest.raises(ValueError):
        TokenSealer(keys, current)


# keyfile --------------------------------------------------------------------------------


async def _store(path: Path) -> SQLiteStore:
    store = SQLiteStore(path / "tidings.db")
    await store.open()
    return store


async def test_key_file_is_created_0600_then_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        first = await load_sealer(key_file, store)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        ref = EndpointRef(UAID, CHANNEL, None)
        token = first.seal_endpoint(ref)
        second = await load_sealer(key_file, store)
        assert second.open_endpoint(token) == ref
    finally:
        await store.close()


async def test_missing_key_file_with_a_used_database_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        await load_sealer(key_file, store)
        key_file.unlink()
        with pytest.raises(KeyFileError, match="missing"):
            await load_sealer(key_file, store)
        assert not key_file.exists()
    finally:
        await store.close()


async def test_replaced_key_file_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        await load_sealer(key_file, store)
        write_keys(key_file, {1: TokenSealer.new_key()}, 1)
        with pytest.raises(KeyFileError, match="another service"):
            await load_sealer(key_file, store)
    finally:
        await store.close()


async def test_added_key_is_accepted_and_recorded(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    store = await _store(tmp_path)
    try:
        await load_sealer(key_file, store)
        keys, _ = read_keys(key_file)
        keys[2] = TokenSealer.new_key()
        write_keys(key_file, keys, 2)
        await load_sealer(key_file, store)
        # The new key is now known too: a file holding only it is accepted.
        write_keys(key_file, {2: keys[2]}, 2)
        await load_sealer(key_file, store)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "content",
    ["", "not json", "[]", '{"keys": {}}', '{"current": 1, "keys": {"1": "c2hvcnQ"}}'],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "keys.json"
    key_file.write_text(content)
    with pytest.raises(KeyFileError):
        read_keys(key_file)


# config ---------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = ServiceConfig()
    assert config.max_ttl == 30 * 24 * 3600
    assert config.max_body == 5630  # autopush's default max_data_bytes
    assert config.origin == "http://127.0.0.1:8080"
    assert config.websocket_url == "ws://127.0.0.1:8080/"
    assert config.secrets_path == Path("tidings-data/tidings-secrets.json")


def test_config_origin_forms() -> None:
    assert ServiceConfig(host="::1", port=9).origin == "http://[::1]:9"
    public = ServiceConfig(public_url="https://push.example.com/")
    assert public.origin == "https://push.example.com"
    assert public.websocket_url == "wss://push.example.com/"


def test_config_from_toml_then_environment(tmp_path: Path) -> None:
    file = tmp_path / "tidings.toml"
    file.write_text('[serve]\nport = 9000\nmax-ttl = 60\nhello_timeout = 2\ndb = "x.db"\n')
    config = load_config(file, environ={"TIDINGS_PORT": "9100", "TIDINGS_REUSE_PORT": "yes"})
    assert config.port == 9100
    assert config.max_ttl == 60
    assert config.hello_timeout == 2.0
    assert config.db == "x.db"
    assert config.reuse_port is True


def test_config_top_level_toml(tmp_path: Path) -> None:
    file = tmp_path / "tidings.toml"
    file.write_text("port = 9001\n")
    assert load_config(file, environ={}).port == 9001


@pytest.mark.parametrize(
    ("toml", "environ"),
    [
        ("nonsense = 1\n", {}),
        ('port = "many"\n', {}),
        ("", {"TIDINGS_PORT": "eighty"}),
        ("", {"TIDINGS_REUSE_PORT": "maybe"}),
        ("port = 1.5\n", {}),
    ],
)
def test_config_refuses_bad_values(tmp_path: Path, toml: str, environ: dict[str, str]) -> None:
    file = tmp_path / "tidings.toml"
    file.write_text(toml)
    with pytest.raises(ValueError):
        load_config(file, environ=environ)


def test_empty_environment_values_are_ignored() -> None:
    assert load_config(None, environ={"TIDINGS_PORT": ""}).port == 8080


# WebSocket frame parser (http/websocket.py) ---------------------------------------------


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame as RFC 6455 section 5.2 lays it out."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, (0x80 if mask else 0) | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_parser_reads_text_ping_and_close() -> None:
    parser = ws.FrameParser(1024)
    data = (
        client_frame(ws.OP_TEXT, "héllo".encode())
        + client_frame(ws.OP_PING, b"p")
        + client_frame(ws.OP_CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    assert parser.feed(data) == [ws.Message("héllo"), ws.Ping(b"p"), ws.Close(1000, "bye")]


def test_parser_reassembles_fragments() -> None:
    parser = ws.FrameParser(1024)
    data = (
        client_frame(ws.OP_TEXT, b"he", fin=False)
        + client_frame(ws.OP_PING, b"")
        + client_frame(ws.OP_CONTINUATION, b"ll", fin=False)
        + client_frame(ws.OP_CONTINUATION, b"o")
    )
    assert parser.feed(data) == [ws.Ping(b""), ws.Message("hello")]


def test_parser_binary_message() -> None:
    assert ws.FrameParser(64).feed(client_frame(ws.OP_BINARY, b"\x00")) == [
        ws.Message(None, b"\x00")
    ]


@given(st.lists(st.text(max_size=300), min_size=1, max_size=5), st.data())
def test_parser_gives_the_same_events_however_the_bytes_are_split(
    texts: list[str], data: st.DataObject
) -> None:
    stream = b"".join(client_frame(ws.OP_TEXT, text.encode()) for text in texts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser = ws.FrameParser(4096)
    events: list[ws.Event] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        events += parser.feed(stream[start:cut])
        start = cut
    assert events == [ws.Message(text) for text in texts]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(ws.OP_TEXT, b"x", mask=False), ws.CLOSE_PROTOCOL_ERROR),
        (bytes([0xC1, 0x80]) + b"\x00" * 4, ws.CLOSE_PROTOCOL_ERROR),  # RSV1 set
        (client_frame(0x3, b""), ws.CLOSE_PROTOCOL_ERROR),  # reserved opcode
        (client_frame(0xB, b""), ws.CLOSE_PROTOCOL_ERROR),  # reserved control opcode
        (client_frame(ws.OP_PING, b"x" * 126), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_PING, b"", fin=False), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CONTINUATION, b"x"), ws.CLOSE_PROTOCOL_ERROR),
        (
            client_frame(ws.OP_TEXT, b"a", fin=False) + client_frame(ws.OP_TEXT, b"b"),
            ws.CLOSE_PROTOCOL_ERROR,
        ),
        (client_frame(ws.OP_TEXT, b"\xff\xfe"), wp.CLOSE_INVALID_PAYLOAD),
        (client_frame(ws.OP_CLOSE, b"\x03"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CLOSE, b"\x03\xe8\xff"), wp.CLOSE_INVALID_PAYLOAD),
        (client_frame(ws.OP_TEXT, b"x" * 200), wp.CLOSE_TOO_BIG),
        (
            client_frame(ws.OP_TEXT, b"x" * 100, fin=False)
            + client_frame(ws.OP_CONTINUATION, b"x" * 100),
            wp.CLOSE_TOO_BIG,
        ),
        (bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 62), wp.CLOSE_TOO_BIG),  # header only
    ],
    ids=[
        "unmasked",
        "rsv1",
        "opcode-3",
        "opcode-11",
        "long-ping",
        "fragmented-ping",
        "lone-continuation",
        "text-inside-fragments",
        "bad-utf8",
        "one-byte-close",
        "bad-utf8-close-reason",
        "too-big",
        "too-big-fragmented",
        "declared-huge",
    ],
)
def test_parser_violations(data: bytes, code: int) -> None:
    with pytest.raises(ws.FrameError) as raised:
        ws.FrameParser(128).feed(data)
    assert raised.value.code == code


@given(st.binary(max_size=300))
def test_parser_any_bytes_give_events_or_frame_error(data: bytes) -> None:
    with contextlib.suppress(ws.FrameError):
        ws.FrameParser(128).feed(data)


def test_accept_key_of_the_rfc_example() -> None:
    # RFC 6455 section 1.3.
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert ws.is_valid_client_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not ws.is_valid_client_key("short")
    assert not ws.is_valid_client_key("")


def test_the_garbage_collector_is_tuned_once_started() -> None:
    import gc

    from tidings.service.run import GC_YOUNG_THRESHOLD, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0  # start-up's objects are out of its sight
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@given(
    channel_id=st.one_of(st.uuids().map(str), st.text(max_size=40)),
    version=st.one_of(st.uuids().map(lambda u: u.hex), st.text(max_size=40)),
    body=st.binary(max_size=64),
    headers=st.one_of(
        st.just({"encoding": "aes128gcm"}),
        st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=3),
    ),
)
def test_notification_frames_are_the_json_of_their_fields(
    channel_id: str, version: str, body: bytes, headers: dict[str, str]
) -> None:
    frame = wp.notification_frame(channel_id, version, body, headers)
    expected: dict[str, Any] = {
        "messageType": "notification",
        "channelID": channel_id,
        "version": version,
    }
    if body:
        expected.update(data=b64url_encode(body), headers=headers)
    assert json.loads(frame) == expected
    assert frame == json.dumps(expected, separators=(",", ":"))


def test_opened_endpoint_tokens_are_remembered_but_only_authentic_ones() -> None:
    from tidings.service import tokens

    sealer = TokenSealer({1: TokenSealer.new_key()}, 1)
    ref = EndpointRef("ab" * 16, "12345678-1234-1234-1234-123456789abc", None)
    token = sealer.seal_endpoint(ref)
    assert sealer.open_endpoint(token) == ref
    assert sealer.open_endpoint(token) is sealer.open_endpoint(token)  # from the cache
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for _ in range(2):
        with pytest.raises(TokenError):
            sealer.open_endpoint(forged)
    assert forged not in sealer._endpoints
    for n in range(tokens.ENDPOINT_CACHE_SIZE + 5):  # bounded
        sealer.open_endpoint(sealer.seal_endpoint(EndpointRef(f"{n:032x}", ref.channel_id, None)))
    assert len(sealer._endpoints) <= tokens.ENDPOINT_CACHE_SIZE
    other = TokenSealer({1: TokenSealer.new_key()}, 1)  # another key: its own cache
    with pytest.raises(TokenError):
        other.open_endpoint(token)
