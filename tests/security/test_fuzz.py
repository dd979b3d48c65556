"""Hypothesis fuzzing of every parser that takes input from outside.

Each parser, given anything, either returns a value or raises its documented error:
push headers and bodies (ServiceError 400/413), endpoint and other capability tokens
(TokenError), VAPID tokens (VapidError, then 401/403), aes128gcm/aesgcm bodies on the
user agent side (DecryptionError), WebSocket frames (FrameError with a close code),
the WebSocket JSON messages (ws_protocol.FrameError), reTHINK messages (MessageError).
Nothing else escapes: no IndexError, no UnicodeError, no crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tidings.service import ws_protocol as wp
from tidings.service.errors import ServiceError
from tidings.service.http.websocket import FrameError, FrameParser
from tidings.service.push_request import MAX_CRYPTO_HEADER, check_push
from tidings.service.tokens import EndpointRef, MessageRef, TokenError, TokenSealer
from tidings.service.vapid_check import VapidChecker
from tidings.webpush import (
    DecryptionError,
    HeaderError,
    VapidError,
    VapidKey,
    decrypt,
    encrypt,
    parse_topic,
    parse_ttl,
    parse_urgency,
    public_key_bytes,
    sign_vapid,
    verify_vapid,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ORIGIN = "https://push.example.net"

header_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=80
)  # what latin-1 decoding of any header bytes yields


# Push headers and bodies ------------------------------------------------------------------


@FUZZ
@given(header_text)
@example("1" * 40)
@example("-0")
@example("1, 2")
def test_header_parsers(value: str) -> None:
    for parse in (parse_ttl, parse_urgency, parse_topic):
        with contextlib.suppress(HeaderError):
            parse(value)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            ["ttl", "urgency", "topic", "content-encoding", "encryption", "crypto-key", "link"]
        ),
        header_text,
    ),
    st.binary(max_size=5000),
)
def test_push_checks(headers: dict[str, str], body: bytes) -> None:
    try:
        facts = check_push(headers, body, max_body=4096)
    except ServiceError as error:
        assert error.status in (400, 413)
        assert error.message
    else:
        assert "p256ecdsa" not in json.dumps(facts.delivery_headers).lower()
        for name in ("encryption", "crypto_key"):  # relayed normalised and bounded
            relayed = facts.delivery_headers.get(name, "")
            assert len(relayed) <= MAX_CRYPTO_HEADER and '"' not in relayed


@FUZZ
@given(
    st.binary(max_size=200),
    st.sampled_from(["aes128gcm", "aesgcm"]),
)
def test_push_bodies_of_either_coding(body: bytes, coding: str) -> None:
    headers = {
        "ttl": "60",
        "content-encoding": coding,
        "encryption": "salt=" + os.urandom(16).hex(),
        "crypto-key": "dh=BAAA;p256ecdsa=BBBB",
    }
    try:
        check_push(headers, body, max_body=4096)
    except ServiceError as error:
        assert error.status == 400


# Capability tokens --------------------------------------------------------------------------

SEALER = TokenSealer({1: TokenSealer.new_key(), 2: TokenSealer.new_key()}, 2)
ENDPOINT = SEALER.seal_endpoint(EndpointRef("a" * 32, "0f0e0d0c-0b0a-4908-8706-050403020100", None))
MESSAGE = SEALER.seal_message(
    MessageRef("a" * 32, "0f0e0d0c-0b0a-4908-8706-050403020100", "b" * 32)
)
OPENERS = (
    SEALER.open_endpoint,
    SEALER.open_message,
    SEALER.open_subscription,
    SEALER.open_set,
    SEALER.open_receipt,
)


@FUZZ
@given(st.text(max_size=600))
@example("")
@example("A" * 513)
@example("====")
def test_tokens_from_anything(token: str) -> None:
    for open_token in OPENERS:
        with pytest.raises(TokenError):
            open_token(token)


@FUZZ
@given(st.sampled_from([ENDPOINT, MESSAGE]), st.data())
def test_altered_tokens_never_open(token: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[position]))
    altered = token[:position] + replacement + token[position + 1 :]
    cut = token[: data.draw(st.integers(0, len(token) - 1))]
    for candidate in (altered, cut, token + replacement):
        for open_token in OPENERS:
            try:
                open_token(candidate)
            except TokenError:
                continue
            # base64url's last character has spare bits: an alteration there may decode
            # to the very same bytes, which is the same token, not a forgery.
            assert candidate.rstrip("=")[:-1] == token[:-1] and open_token is not None


# VAPID ----------------------------------------------------------------------------------------

VAPID_KEY = VapidKey.generate()
GOOD_VAPID = sign_vapid(VAPID_KEY, ORIGIN, "mailto:ops@example.net").authorization


@FUZZ
@given(header_text, header_text)
@example("vapid t=a.b.c, k=BBBB", "")
@example("WebPush a.b.c", "p256ecdsa=BBBB")
@example("vapid t=" + "a" * 5000 + ", k=x", "")
def test_vapid_from_anything(authorization: str, crypto_key: str) -> None:
    with pytest.raises(VapidError):
        verify_vapid(authorization, audience=ORIGIN, crypto_key=crypto_key or None)
    checker = VapidChecker(ORIGIN)
    for restricted in (None, b"\0" * 16):
        try:
            checker.check({"authorization": authorization, "crypto-key": crypto_key}, restricted)
        except ServiceError as error:
            assert error.status in (401, 403)


@FUZZ
@given(st.data())
def test_altered_vapid_never_verifies(data: st.DataObject) -> None:
    position = data.draw(st.integers(len("vapid t="), len(GOOD_VAPID) - 1))
    character = data.draw(st.characters(min_codepoint=0x21, max_codepoint=0x7E))
    altered = GOOD_VAPID[:position] + character + GOOD_VAPID[position + 1 :]
    if altered == GOOD_VAPID:
        return
    try:
        verified = verify_vapid(altered, audience=ORIGIN)
    except VapidError:
        return
    # Only a change that decodes to the same token and key can verify (spare bits).
    assert verified.public_key == public_key_bytes(VAPID_KEY.private_key.public_key())


# Message bodies on the user agent side -------------------------------------------------------

UA_KEY = ec.generate_private_key(ec.SECP256R1())
UA_AUTH = os.urandom(16)
UA_PUBLIC = public_key_bytes(UA_KEY.public_key())
GOOD_BODY = encrypt(b"hello", UA_PUBLIC, UA_AUTH)


@FUZZ
@given(st.binary(max_size=400))
@example(b"")
@example(GOOD_BODY[:21])
@example(GOOD_BODY[:16] + b"\0\0\0\0" + GOOD_BODY[20:])  # record size 0
@example(GOOD_BODY[:20] + b"\xff" + GOOD_BODY[21:])  # key id longer than the body
def test_aes128gcm_decrypt_from_anything(body: bytes) -> None:
    with pytest.raises(DecryptionError):
        decrypt(body, UA_KEY, UA_AUTH)


@FUZZ
@given(st.data())
def test_altered_aes128gcm_never_decrypts(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(GOOD_BODY) - 1))
    flip = data.draw(st.integers(1, 255))
    altered = bytearray(GOOD_BODY)
    altered[position] ^= flip
    try:
        plaintext = decrypt(bytes(altered), UA_KEY, UA_AUTH)
    except DecryptionError:
        return
    # RFC 8188 does not authenticate the record size: a one-record body still opens
    # under another size it fits in, to the same plaintext. Nothing else may change.
    assert 16 <= position < 20 and plaintext == b"hello"


# WebSocket frames and the JSON messages inside them ------------------------------------------


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + data


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
@example([b"\x81\x85\0\0\0\0hello"])
@example([b"\x81\xff" + b"\xff" * 8])
@example([masked(0x1, b"\xff\xfe")])
@example([masked(0x8, b"\x03")])
@example([masked(0x0, b"x")])
def test_websocket_frames_from_anything(chunks: list[bytes]) -> None:
    parser = FrameParser(max_message=1024)
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except FrameError as error:
        assert 1000 <= error.code <= 4999
        assert error.reason


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3]),
            st.binary(max_size=200),
            st.booleans(),
        ),
        max_size=6,
    )
)
def test_websocket_frame_sequences(frames: list[tuple[int, bytes, bool]]) -> None:
    parser = FrameParser(max_message=1024)
    try:
        parser.feed(b"".join(masked(op, payload, fin) for op, payload, fin in frames))
    except FrameError as error:
        assert 1000 <= error.code <= 4999


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
message_types = st.sampled_from(
    ["hello", "register", "unregister", "ack", "nack", "ping", "broadcast_subscribe", "x"]
)


@FUZZ
@given(st.text(max_size=300))
@example("[" * 100_000)
@example('{"messageType": "hello", "uaid": 5}')
def test_websocket_messages_from_any_text(text: str) -> None:
    try:
        wp.parse_client_frame(text)
    except wp.FrameError as error:
        assert error.code >= 1000


@FUZZ
@given(
    message_types,
    st.dictionaries(
        st.sampled_from(
            [
                "uaid",
                "channelID",
                "key",
                "updates",
                "version",
                "code",
                "broadcasts",
                "use_webpush",
                "status",
            ]
        ),
        json_values,
        max_size=5,
    ),
)
def test_websocket_messages_with_plausible_fields(kind: str, fields: dict[str, Any]) -> None:
    try:
        wp.parse_client_frame(json.dumps({"messageType": kind, **fields}))
    except wp.FrameError as error:
        assert error.code >= 1000


# reTHINK messages ---------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_rethink_messages_from_anything(text: str | bytes) -> None:
    from tidings.hyperty.message import Message, MessageError

    with contextlib.suppress(MessageError):
        Message.from_json(text)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "id": json_values,
            "type": st.sampled_from(["create", "read", "update", "delete", "response", "x"])
            | json_values,
            "from": st.sampled_from(["hyperty://example.net/abc", "runtime://x/1", ""])
            | json_values,
            "to": st.sampled_from(["hyperty://example.net/def", "domain://push.example.net"])
            | json_values,
            "body": json_values,
        },
    )
)
def test_rethink_messages_with_plausible_fields(document: dict[str, Any]) -> None:
    from tidings.hyperty.message import Message, MessageError

    with contextlib.suppress(MessageError):
        Message.from_dict(document)
