"""RFC 6455 frames without sockets (service/http/websocket.py): parsed however the bytes
are split, and every protocol violation named with its close code."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.service import ws_protocol as wp
from tidings.service.http import websocket as ws
from tidings.service.tokens import (
    EndpointRef,
    TokenError,
    TokenSealer,
)
from tidings.webpush import b64url_encode

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"


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
