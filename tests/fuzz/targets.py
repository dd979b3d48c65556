"""One fuzz target per parser that takes input from outside, each asserting its contract.

A target takes any bytes and either returns or raises `AssertionError` (a broken
contract) or whatever else escaped the parser (a crash). The contract of every parser is
the same: given anything, it returns a value or raises its documented error, nothing
else; where a value can be written back, writing and reading it again gives it back.

The targets are plain functions, so three drivers share them: `tests/fuzz/run.py` (atheris,
coverage-guided, for `make fuzz`), and `tests/fuzz/test_targets.py` (the corpus replayed,
a seeded atheris run of bounded length, and a derandomized Hypothesis run, in `make test`).
Nothing here does I/O or keeps state between inputs, so any failure replays from its input.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import struct
from collections.abc import Callable
from typing import Any

import httptools
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.hyperty.message import Message as RethinkMessage
from tidings.hyperty.message import MessageError
from tidings.service import ws_protocol as wp
from tidings.service.cluster.redis_bus import RedisBus
from tidings.service.cluster.wire import Deliver, decode_bus_message, encode_message
from tidings.service.errors import ServiceError
from tidings.service.http import websocket as ws
from tidings.service.http.admission import ConnectionAdmission, Slot
from tidings.service.http.h1 import Http1Connection
from tidings.service.http.messages import Request, Response
from tidings.service.push_request import check_push
from tidings.service.routes import Routes
from tidings.service.store.base import StoredMessage
from tidings.service.tokens import EndpointRef, MessageRef, TokenError, TokenSealer
from tidings.service.vapid_check import VapidChecker
from tidings.useragent import protocol as ua
from tidings.useragent.dispatch import open_message
from tidings.useragent.transport import Delivery
from tidings.webpush import (
    DecryptionError,
    VapidError,
    VapidKey,
    aesgcm_encrypt,
    decrypt,
    encrypt,
    public_key_bytes,
    sign_vapid,
    verify_vapid,
)
from tidings.webpush.aesgcm import aesgcm_decrypt

Target = Callable[[bytes], None]
ORIGIN = "https://push.example.net"


def _split(data: bytes, parts: int) -> list[bytes]:
    """`data` cut at its first `parts - 1` newlines (missing parts are empty)."""
    pieces = data.split(b"\n", parts - 1)
    return pieces + [b""] * (parts - len(pieces))


# WebSocket frames (service/http/websocket.py) ---------------------------------------------

WS_MAX_MESSAGE = 1024


def _masked(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x0f\xa5\x3c\x81"
) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def websocket_frames(data: bytes) -> None:
    """Client frames, fed in chunks whose size the first byte picks: FrameError only."""
    step = (data[0] % 17) + 1 if data else 1
    parser = ws.FrameParser(max_message=WS_MAX_MESSAGE)
    received = 0
    try:
        for start in range(1, len(data), step):
            for event in parser.feed(data[start : start + step]):
                if isinstance(event, ws.Message):
                    assert (event.text is None) != (event.data is None)
                    size = (
                        len(event.text.encode())
                        if event.text is not None
                        else len(event.data or b"")
                    )
                    assert size <= WS_MAX_MESSAGE
                elif isinstance(event, ws.Ping):
                    assert len(event.payload) <= 125
                else:
                    assert isinstance(event, ws.Close)
                    # Any code reads (PushWebSocket answers a reserved one with 1002).
                    assert event.code is None or 0 <= event.code <= 0xFFFF
                received += 1
    except ws.FrameError as error:
        assert 1000 <= error.code <= 4999 and error.reason
    # Round trip: the message's bytes as one masked frame, and in fragments, read back.
    payload = data[:WS_MAX_MESSAGE]
    for frames in (
        _masked(0x2, payload),
        _masked(0x2, payload[:7], fin=False) + _masked(0x0, payload[7:]),
    ):
        events = ws.FrameParser(max_message=WS_MAX_MESSAGE).feed(frames)
        assert events == [ws.Message(None, payload)], events
    text = data.decode("utf-8", "replace")
    if len(text.encode()) <= WS_MAX_MESSAGE:
        events = ws.FrameParser(max_message=WS_MAX_MESSAGE).feed(_masked(0x1, text.encode()))
        assert events == [ws.Message(text)], events


# HTTP/1.1 heads (service/http/h1.py over httptools) --------------------------------------


class _Transport:
    """What Http1Connection writes, and whether it closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("203.0.113.7", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: Any) -> None:
        self.closed = True  # switched away from HTTP/1.1: nothing more to check here


class _App:
    """The real Routes' limits and error answers; every parsed request answers 200."""

    too_large = Routes.too_large
    plain_error = staticmethod(Routes.plain_error)

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def body_limit(self, method: str, path: str) -> int:
        return 4096 if path.startswith("/push/") else 65536

    def client_of(self, request: Request) -> str:
        return request.client  # no trusted proxies

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(200, {}, b"ok")

    async def admit_websocket(self, request: Request) -> Response | None:
        return None


class _Context:
    request_timeout = 30.0
    keepalive_timeout = 75.0
    max_websocket_message = WS_MAX_MESSAGE
    draining = False
    scheme = "http"

    def __init__(self) -> None:
        self.app = _App()
        self.connections: set[object] = set()
        self.admission = ConnectionAdmission(per_address=None, max_connections=None)

    def admit(self, transport: object) -> Slot | None:
        return self.admission.open("")  # no caps: every connection is served

    def log_request(self, request: Request, status: int, started: float) -> None:
        pass

    def date_header(self) -> bytes:
        return b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"

    def make_websocket(self, transport: object, client: str, slot: Slot | None = None) -> Any:
        return _Sink()

    def make_http2(self, slot: Slot | None = None) -> Any:
        return _Sink()


class _Sink:
    def connection_made(self, transport: object) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass


_LOOP: asyncio.AbstractEventLoop | None = None
H1_STATUSES = {100, 101, 200, 400, 404, 413, 426, 431, 501, 505}


async def _drive_h1(data: bytes) -> tuple[_Transport, _Context]:
    context = _Context()
    connection = Http1Connection(context)  # type: ignore[arg-type]
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    step = (data[0] % 64) + 1 if data else 1
    for start in range(1, len(data), step):
        if transport.closed:
            break
        connection.data_received(data[start : start + step])
        await asyncio.sleep(0)
    for _ in range(4):  # let queued answers be written
        await asyncio.sleep(0)
    connection.connection_lost(None)
    return transport, context


def http1_heads(data: bytes) -> None:
    """Any bytes on an HTTP/1.1 connection: no exception escapes, only 4xx or the handler's 200."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    transport, context = _LOOP.run_until_complete(_drive_h1(data))
    for chunk in transport.written:
        if chunk.startswith(b"HTTP/1.1 "):
            status = int(chunk[9:12])
            assert status in H1_STATUSES, chunk[:200]
            if status >= 400:
                document = json.loads(chunk.split(b"\r\n\r\n", 1)[1])
                assert document["code"] == status and document["errno"] and document["message"]
    for request in context.app.requests:
        assert isinstance(request.method, str) and request.path.startswith(("/", "*", "h"))
        assert all(k == k.lower() for k in request.headers)
        assert request.http_version in ("1.0", "1.1")  # HTTP/1.2 is served as 1.1
    # The URL parser alone: only its documented error.
    with contextlib.suppress(httptools.HttpParserInvalidURLError):
        httptools.parse_url(data)


# The Firefox protocol's JSON (service/ws_protocol.py) ------------------------------------


def firefox_json(data: bytes) -> None:
    """One text frame from a user agent: a ClientMessage or FrameError(close code)."""
    text = data.decode("utf-8", "replace")
    try:
        message = wp.parse_client_frame(text)
    except wp.FrameError as error:
        assert 1000 <= error.code <= 4999 and error.reason
        return
    if isinstance(message, wp.Hello):
        assert message.uaid is None or (len(message.uaid) == 32 and message.uaid.islower())
        assert isinstance(message.broadcasts, dict)
        json.loads(wp.hello_reply(message.uaid or "0" * 32, message.broadcasts))
    elif isinstance(message, (wp.Register, wp.Unregister)):
        assert len(message.channel_id) <= 64
        if message.error is None:
            assert wp.canonical_channel_id(message.channel_id) == message.channel_id
        reply = wp.register_reply(message.channel_id, None, 400)
        assert json.loads(reply)["channelID"] == message.channel_id
    elif isinstance(message, wp.Ack):
        for update in message.updates:
            assert update.version and len(update.version) <= 128
            assert wp.canonical_channel_id(update.channel_id) == update.channel_id
    elif isinstance(message, wp.Nack):
        assert len(message.version) <= 128
    else:
        assert isinstance(message, (wp.Ping, wp.BroadcastSubscribe))


# The Firefox protocol, the user agent's side (useragent/protocol.py) ------------------------


def useragent_frames(data: bytes) -> None:
    """A frame from a (possibly hostile) service: a ServerMessage or ProtocolError; what
    the service writes as a notification reads back the same at the user agent."""
    try:
        ua.parse_server_frame(data)
    except ua.ProtocolError as error:
        assert str(error)
    raw_channel, raw_version, body, extra = _split(data, 4)
    # The service's fast path (hex ids) and its JSON path (anything else) alike.
    plain = raw_channel[:1] == b"0"
    channel = raw_channel.hex() if plain else raw_channel.decode("utf-8", "replace")
    version = raw_version.hex() if plain else raw_version.decode("utf-8", "replace")
    headers = {"encoding": "aes128gcm"}
    if extra:
        headers = {"encoding": "aesgcm", "encryption": extra.decode("utf-8", "replace")}
    frame = wp.notification_frame(channel, version, body, headers)
    got = ua.parse_server_frame(frame)
    relayed = {k: v for k, v in headers.items() if v} if body else {}
    assert got == ua.Notification(channel.lower(), version, body, relayed), (got, frame)


# Capability tokens (service/tokens.py) ---------------------------------------------------

SEALER = TokenSealer({1: bytes(range(32)), 2: bytes(range(32, 64))}, 2)
OPENERS: tuple[Callable[[str], object], ...] = (
    SEALER.open_endpoint,
    SEALER.open_message,
    SEALER.open_subscription,
    SEALER.open_set,
    SEALER.open_receipt,
)


def _uuid(raw: bytes) -> str:
    value = bytearray(raw.ljust(16, b"\0")[:16])
    value[6] = (value[6] & 0x0F) | 0x40
    value[8] = (value[8] & 0x3F) | 0x80
    h = value.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def tokens(data: bytes) -> None:
    """Any text as every kind of token: TokenError only; sealed refs open to themselves."""
    text = data.decode("latin-1")
    opened = []
    for open_token in OPENERS:
        try:
            opened.append(open_token(text))
        except TokenError:
            continue
    # Only a token this sealer made opens (the corpus has some), and as one kind only.
    assert len(opened) <= 1, opened
    uaid = data[:16].ljust(16, b"\0").hex()
    channel = _uuid(data[16:32])
    restricted = data[32:48].ljust(16, b"\0") if len(data) > 40 else None
    endpoint = EndpointRef(uaid, channel, restricted)
    sealed = SEALER.seal_endpoint(endpoint)
    assert SEALER.open_endpoint(sealed) == endpoint
    message = MessageRef(uaid, channel, data[48:64].ljust(16, b"\0").hex())
    assert SEALER.open_message(SEALER.seal_message(message)) == message
    for wrong in (SEALER.open_message, SEALER.open_subscription, SEALER.open_receipt):
        try:
            wrong(sealed)
        except TokenError:
            continue
        raise AssertionError("an endpoint token opened as another kind")


# VAPID headers (webpush/vapid.py, service/vapid_check.py) --------------------------------

VAPID_KEY = VapidKey(ec.derive_private_key(0xA11CE, ec.SECP256R1()))
CHECKER = VapidChecker(ORIGIN, cache_size=16)


def vapid_headers(data: bytes) -> None:
    """`Authorization` and `Crypto-Key` from anything: VapidError; 401/403 at the service."""
    authorization, crypto_key = (p.decode("latin-1") for p in _split(data, 2))
    try:
        verified = verify_vapid(authorization, audience=ORIGIN, crypto_key=crypto_key or None)
    except VapidError:
        pass
    else:  # only a token VAPID_KEY signed (the corpus has one) can verify
        assert verified.public_key == public_key_bytes(VAPID_KEY.private_key.public_key())
    for restricted in (None, b"\0" * 16):
        try:
            CHECKER.check({"authorization": authorization, "crypto-key": crypto_key}, restricted)
        except ServiceError as error:
            assert error.status in (401, 403) and error.message


# aes128gcm / aesgcm bodies (webpush/ece.py, aesgcm.py, the user agent's decrypt path) ------

UA_KEY = ec.derive_private_key(0x5EED, ec.SECP256R1())
UA_PUBLIC = public_key_bytes(UA_KEY.public_key())
UA_AUTH = bytes(range(16))


def aes128gcm_bodies(data: bytes) -> None:
    """A body for the user agent: DecryptionError; what it encrypts decrypts to itself."""
    try:
        opened = decrypt(data, UA_KEY, UA_AUTH)
    except DecryptionError:
        pass
    else:  # only a body encrypted to UA_KEY (the corpus has one) decrypts
        assert len(opened) < len(data)
    plaintext = data[:3000]
    record_size = 18 + (data[0] if data else 0) + len(plaintext)
    body = encrypt(plaintext, UA_PUBLIC, UA_AUTH, record_size=record_size)
    assert decrypt(body, UA_KEY, UA_AUTH) == plaintext


def aesgcm_bodies(data: bytes) -> None:
    """Body, `Encryption` and `Crypto-Key` from anything, on both sides of the service.

    The service checks the headers (ServiceError 400/413 only); the user agent's decrypt
    path (useragent/dispatch.open_message) raises DecryptionError only.
    """
    body, encryption, crypto_key = _split(data, 3)
    enc, key = encryption.decode("latin-1"), crypto_key.decode("latin-1")
    headers = {"ttl": "60", "content-encoding": "aesgcm", "encryption": enc, "crypto-key": key}
    try:
        facts = check_push(headers, body, max_body=4096)
    except ServiceError as error:
        assert error.status in (400, 413) and error.message
    else:  # the VAPID key is never relayed: no parameter of Crypto-Key is p256ecdsa
        relayed = facts.delivery_headers.get("crypto_key", "")
        for param in relayed.replace(",", ";").split(";"):
            assert param.split("=", 1)[0].strip().lower() != "p256ecdsa", relayed
    for coding in ("aesgcm", "aes128gcm", "AESGCM", enc[:20]):
        delivery = Delivery(
            "h", "m", body, {"encoding": coding, "encryption": enc, "crypto_key": key}
        )
        with contextlib.suppress(DecryptionError):
            open_message(delivery, UA_KEY, UA_AUTH)
    plaintext = data[:2000]
    message = aesgcm_encrypt(plaintext, UA_PUBLIC, UA_AUTH)
    assert (
        aesgcm_decrypt(
            message.body,
            UA_KEY,
            UA_AUTH,
            encryption=message.headers["Encryption"],
            crypto_key=message.headers["Crypto-Key"],
        )
        == plaintext
    )


# Cluster bus messages (service/cluster/redis_bus.py) -------------------------------------


class _NoRedisBus(RedisBus):
    """The bus's listener callback, with what it would offer or spawn recorded, not run."""

    def __init__(self) -> None:
        super().__init__("redis://127.0.0.1:1/0?prefix=fuzz:", node_id="fuzz")
        self.offered: list[StoredMessage] = []
        self.spawned = 0
        self._hub.offer = self.offered.append  # type: ignore[method-assign,assignment]

    def _spawn(self, coro: Any) -> None:
        coro.close()
        self.spawned += 1

    def _answer_offer(self, node: str, message_id: str, offered: bool, code: int | None) -> None:
        self.spawned += 1  # a live offer's answer, published by a task


_BUS: _NoRedisBus | None = None


def _check_stored(message: StoredMessage) -> None:
    for name in ("message_id", "uaid", "channel_id", "urgency"):
        assert isinstance(getattr(message, name), str), name
    assert isinstance(message.body, bytes) and isinstance(message.ttl, int)
    assert math.isfinite(message.created_at) and math.isfinite(message.expires_at)
    assert message.topic is None or isinstance(message.topic, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in message.headers.items())


def bus_messages(data: bytes) -> None:
    """A message on this node's Redis channel: handled or dropped, never raised."""
    global _BUS
    if _BUS is None:
        logging.getLogger("tidings.cluster").setLevel(logging.ERROR)
        _BUS = _NoRedisBus()
    bus = _BUS
    bus.offered.clear()
    bus._on_bus_message(data)
    for offered in bus.offered:
        _check_stored(offered)
    # Round trip: any message a node publishes reads back the same on another.
    digest = hashlib.sha256(data).hexdigest()
    message = StoredMessage(
        message_id=digest[:56],
        uaid=digest[:32],
        channel_id=digest[32:64],
        body=data,
        ttl=len(data) * 977,
        created_at=len(data) / 7,
        expires_at=len(data) * 3.5,
        urgency=("very-low", "low", "normal", "high")[len(data) % 4],
        topic=digest[:32] if len(data) % 2 else None,
        headers={"encoding": "aesgcm", "encryption": "salt=" + digest[:22]} if data else {},
        receipt_id=digest[32:] if len(data) % 3 else None,
    )
    decoded = decode_bus_message(encode_message(message))
    assert isinstance(decoded, Deliver) and decoded.message == message


# reTHINK messages (hyperty/message.py) ---------------------------------------------------


def rethink_messages(data: bytes) -> None:
    """A reTHINK message from anything: MessageError; a valid one writes back the same."""
    try:
        message = RethinkMessage.from_json(data)
    except MessageError as error:
        assert error.field and str(error)
        return
    again = RethinkMessage.from_json(message.to_json())
    assert again == message
    assert again.to_dict() == message.to_dict()
    assert RethinkMessage.from_json(message.encoded()) == message


TARGETS: dict[str, Target] = {
    "websocket_frames": websocket_frames,
    "http1_heads": http1_heads,
    "firefox_json": firefox_json,
    "useragent_frames": useragent_frames,
    "tokens": tokens,
    "vapid_headers": vapid_headers,
    "aes128gcm_bodies": aes128gcm_bodies,
    "aesgcm_bodies": aesgcm_bodies,
    "bus_messages": bus_messages,
    "rethink_messages": rethink_messages,
}
"""Every target by name (the name of its corpus directory)."""


def seeds() -> dict[str, dict[str, bytes]]:
    """Valid inputs made with this process's keys (the corpus files hold fixed ones)."""
    good_vapid = sign_vapid(VAPID_KEY, ORIGIN, "mailto:ops@example.net")
    aesgcm = aesgcm_encrypt(b"hello", UA_PUBLIC, UA_AUTH)
    endpoint = SEALER.seal_endpoint(EndpointRef("a" * 32, _uuid(b"c" * 16), None))
    stored = StoredMessage("m" * 32, "a" * 32, _uuid(b"c" * 16), b"\x01\x02", 60, 1.0, 61.0)
    return {
        "vapid_headers": {"valid": good_vapid.authorization.encode()},
        "aes128gcm_bodies": {"valid": encrypt(b"hello", UA_PUBLIC, UA_AUTH)},
        "aesgcm_bodies": {
            "valid": b"\n".join(
                [
                    aesgcm.body,
                    aesgcm.headers["Encryption"].encode(),
                    aesgcm.headers["Crypto-Key"].encode(),
                ]
            )
        },
        "tokens": {"valid-endpoint": endpoint.encode()},
        "bus_messages": {"valid": encode_message(stored).encode()},
    }
