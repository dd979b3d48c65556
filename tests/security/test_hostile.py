"""A corpus of hostile inputs, each with the outcome docs/security.md promises.

A table of cases: each has a name, the protocol it attacks (HTTP/1.1, HTTP/2, WebSocket,
the Firefox protocol, the RFC 8030 API, the cluster bus, the Hyperty element), what it
sends (bytes on a real socket, frames built by hand: tests/security/hostile_clients.py),
and the outcome class it must get: an HTTP answer with its status and JSON error, a
WebSocket close with its code, a GOAWAY with its code, or "ignored" (the connection, or
the bus listener, carries on). Every case runs against a real server in this process.

Whatever a case gets, it must never get a 5xx, crash the server or leak: after each case
the service answers /health, the stored message is still there for its user agent, no
answer grants CORS or names a file system path, and the tasks the server runs come back
to what they were before the case.

A case whose hole another branch of issue 16 is closing carries `hole`: it is a strict
xfail until the fix is merged (the lead then deletes the `hole`). The table in
docs/security.md lists the same ids with the same protocol and outcome; a test checks
that the two agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import h2.connection
import h2.errors
import h2.settings
import pytest
from hostile_clients import (
    Outcome,
    frame,
    h2_exchange,
    h2_request,
    http_request,
    send_http,
    text,
    websocket_exchange,
)

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service.config import ServiceConfig
from tidings.service.tokens import EndpointRef, MessageRef, TokenSealer
from tidings.webpush import VapidKey, b64url_decode, b64url_encode, encrypt, sign_vapid

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
U = "0f0e0d0c-0b0a-4908-8706-050403020100"  # a channel id nobody registered


@dataclass
class Target:
    """What the corpus aims at: a running service with two subscriptions."""

    running: RunningService
    agent: TestAgent
    open: Registration  # unrestricted
    restricted: Registration  # restricted to `key`
    key: VapidKey
    message_path: str  # a stored message of `open`
    other_uaid: str  # another user agent
    tmp_path: Path

    @property
    def port(self) -> int:
        return self.running.config.port

    @property
    def open_path(self) -> str:
        return "/push/" + self.open.endpoint.rsplit("/", 1)[-1]

    @property
    def restricted_path(self) -> str:
        return "/push/" + self.restricted.endpoint.rsplit("/", 1)[-1]

    @property
    def origin(self) -> str:
        return self.running.url

    def body(self) -> bytes:
        keys = self.open.subscription_info()["keys"]
        return encrypt(b"hostile", keys["p256dh"], keys["auth"])


# Outcome classes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer with this status and (errno given) the JSON error document."""

    status: int
    errno: int | None = None

    def text(self) -> str:
        return f"{self.status}" + (f" errno {self.errno}" if self.errno is not None else "")

    def check(self, got: Outcome) -> None:
        assert got.kind == "http", got
        assert got.status == self.status, (got.status, got.body[:300])
        if self.errno is not None:
            document = got.json()
            assert document["errno"] == self.errno, document
            assert document["code"] == self.status, document


@dataclass(frozen=True)
class Refused:
    """Any 4xx with a JSON error (the exact status is the fixing branch's choice)."""

    def text(self) -> str:
        return "4xx"

    def check(self, got: Outcome) -> None:
        assert got.kind == "http" and got.status is not None, got
        assert 400 <= got.status < 500, (got.status, got.body[:300])
        if got.headers.get("content-type", "").startswith("application/json"):
            assert got.json()["code"] == got.status


@dataclass(frozen=True)
class Closed:
    """The WebSocket is closed by the service with `code` (None: any code, or dropped)."""

    code: int | None

    def text(self) -> str:
        return f"close {self.code}" if self.code is not None else "closed"

    def check(self, got: Outcome) -> None:
        assert got.kind == "closed", got
        if self.code is not None:
            assert got.code == self.code, got


@dataclass(frozen=True)
class Ignored:
    """The connection carries on (a ping still gets its pong); `reply` is the status of
    the Firefox protocol reply the input got, if it gets one."""

    reply: int | None = None

    def text(self) -> str:
        return "ignored" + (f", reply {self.reply}" if self.reply is not None else "")

    def check(self, got: Outcome) -> None:
        assert got.kind == "open", got
        if self.reply is not None:
            statuses = [json.loads(f).get("status") for f in got.frames]
            assert self.reply in statuses, got.frames


@dataclass(frozen=True)
class GoAway:
    """HTTP/2: the service ends the connection with GOAWAY and this error code."""

    code: h2.errors.ErrorCodes

    def text(self) -> str:
        return f"GOAWAY {self.code.name}"

    def check(self, got: Outcome) -> None:
        assert got.kind == "goaway", got
        assert got.code == self.code, got


@dataclass(frozen=True)
class Reset:
    """HTTP/2: the service refuses the stream with RST_STREAM and this error code, and
    the connection goes on."""

    code: h2.errors.ErrorCodes

    def text(self) -> str:
        return f"RST_STREAM {self.code.name}"

    def check(self, got: Outcome) -> None:
        assert got.kind == "reset", got
        assert got.code == self.code, got


@dataclass(frozen=True)
class Delivered:
    """The cluster bus: the listener survives and delivers the next message."""

    def text(self) -> str:
        return "ignored, next message delivered"

    def check(self, got: Outcome) -> None:
        assert got.kind == "open", got


Expect = Answer | Refused | Closed | Ignored | GoAway | Delivered


@dataclass(frozen=True)
class Case:
    name: str
    protocol: str
    what: str
    send: Callable[[Target], Awaitable[Outcome]]
    expect: Expect
    hole: str | None = None  # issue 16 item and the branch fixing it

    def param(self) -> object:
        marks = [pytest.mark.xfail(strict=True, reason=self.hole)] if self.hole else []
        return pytest.param(self, marks=marks, id=self.name)


# Ways to send ------------------------------------------------------------------------------


def raw(build: Callable[[Target], bytes]) -> Callable[[Target], Awaitable[Outcome]]:
    return lambda t: send_http(t.port, build(t))


def ws(
    frames: Callable[[Target], list[bytes]] | list[bytes],
    *,
    hello: bool = True,
    probe_text: bool = False,
) -> Callable[[Target], Awaitable[Outcome]]:
    """WebSocket frames; the liveness probe after them is a Ping (framing cases)."""

    def send(t: Target) -> Awaitable[Outcome]:
        chunks = frames(t) if callable(frames) else frames
        return websocket_exchange(t.port, lambda: chunks, hello, probe_text)

    return send


def ff(frames: list[bytes], *, hello: bool = True) -> Callable[[Target], Awaitable[Outcome]]:
    """Firefox protocol messages; the probe after them is `{}`, answered in order."""
    return ws(frames, hello=hello, probe_text=True)


def over_h2(
    script: Callable[[Target], Callable[[h2.connection.H2Connection], bytes]],
    stream_id: int = 1,
) -> Callable[[Target], Awaitable[Outcome]]:
    """HTTP/2 frames; the outcome is what becomes of `stream_id` (or the connection)."""
    return lambda t: h2_exchange(t.port, script(t), stream_id)


def push(target: Target, *headers: tuple[str, str], path: str | None = None) -> bytes:
    base = [("content-encoding", "aes128gcm")]
    if not any(name.lower() == "ttl" for name, _ in headers):
        base.append(("ttl", "60"))
    return http_request("POST", path or target.open_path, base + list(headers), target.body())


def request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    return http_request(method, path, headers, body)


def jwt(header: dict[str, object], claims: dict[str, object], signature: bytes = b"") -> str:
    def part(document: dict[str, object]) -> str:
        return b64url_encode(json.dumps(document).encode())

    return f"{part(header)}.{part(claims)}.{b64url_encode(signature)}"


def vapid(target: Target, **claims: object) -> tuple[str, str]:
    """A VAPID header for the restricted subscription with `claims` changed."""
    good = sign_vapid(target.key, target.origin, "mailto:ops@example.net")
    header, payload, signature = good.token.split(".")
    document = json.loads(b64url_decode(payload)) | claims
    token = jwt(json.loads(b64url_decode(header)), document, b64url_decode(signature))
    return ("authorization", f"vapid t={token}, k={good.public_key}")


def tampered(path: str) -> str:
    token = path.rsplit("/", 1)[-1]
    middle = len(token) // 2
    swapped = "A" if token[middle] != "A" else "B"
    return path[: -len(token)] + token[:middle] + swapped + token[middle + 1 :]


OTHER_SERVICE = TokenSealer({1: TokenSealer.new_key()}, 1)
WEBSOCKET_UPGRADE = [
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
]


def _alg_none(t: Target) -> bytes:
    good = sign_vapid(t.key, t.origin, "mailto:ops@example.net")
    claims = json.loads(b64url_decode(good.token.split(".")[1]))
    token = jwt({"typ": "JWT", "alg": "none"}, claims)
    return push(
        t, ("authorization", f"vapid t={token}, k={good.public_key}"), path=t.restricted_path
    )


def _off_curve(t: Target) -> bytes:
    good = sign_vapid(t.key, t.origin, "mailto:ops@example.net")
    bogus = b64url_encode(b"\x04" + bytes(range(1, 65)))  # x, y not on P-256
    return push(t, ("authorization", f"vapid t={good.token}, k={bogus}"), path=t.restricted_path)


def _other_key(t: Target) -> bytes:
    other = sign_vapid(VapidKey.generate(), t.origin, "mailto:ops@example.net")
    return push(t, ("authorization", other.authorization), path=t.restricted_path)


def _foreign_endpoint(t: Target) -> bytes:
    assert t.agent.uaid is not None
    ref = EndpointRef(t.agent.uaid, t.open.channel_id, None)
    return push(t, path="/push/" + OTHER_SERVICE.seal_endpoint(ref))


def _foreign_message(t: Target) -> bytes:
    assert t.agent.uaid is not None
    ref = MessageRef(t.agent.uaid, t.open.channel_id, "c" * 32)
    return request("DELETE", "/m/" + OTHER_SERVICE.seal_message(ref), [])


def _message_of_another_agent(t: Target) -> bytes:
    # The service's own key seals it (as a bug might): the other user agent's id with
    # this message's id. The message must stay where it is.
    service = t.running.service
    assert service is not None
    ref = service.sealer.open_message(t.message_path.rsplit("/", 1)[-1])
    forged = MessageRef(t.other_uaid, ref.channel_id, ref.message_id)
    return request("DELETE", service.message_path(forged), [])


RAPID_RESET_LAST = 4001


def _rapid_reset(t: Target) -> Callable[[h2.connection.H2Connection], bytes]:
    """CVE-2023-44487: streams opened and reset at once, never over the stream limit,
    then a request on stream RAPID_RESET_LAST: answered means the flood went unnoticed."""
    get = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/health")]

    def script(conn: h2.connection.H2Connection) -> bytes:
        out = b""
        for stream_id in range(1, RAPID_RESET_LAST, 2):
            conn.send_headers(stream_id, get)
            conn.reset_stream(stream_id)
            out += conn.data_to_send()
        conn.send_headers(RAPID_RESET_LAST, get, end_stream=True)
        return out + conn.data_to_send()

    return script


TOO_MANY_STREAMS_LAST = 2 * 200 - 1


def _too_many_streams(t: Target) -> Callable[[h2.connection.H2Connection], bytes]:
    """Streams opened and never finished, past the advertised MAX_CONCURRENT_STREAMS."""

    def script(conn: h2.connection.H2Connection) -> bytes:
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        out = conn.data_to_send()
        conn.local_settings.acknowledge()
        conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 10_000
        conn.remote_settings.acknowledge()
        for stream_id in range(1, TOO_MANY_STREAMS_LAST + 2, 2):
            conn.send_headers(
                stream_id,
                [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/")],
            )
            out += conn.data_to_send()
        return out

    return script


def _window_overflow(t: Target) -> Callable[[h2.connection.H2Connection], bytes]:
    def script(conn: h2.connection.H2Connection) -> bytes:
        # WINDOW_UPDATE on the connection taking the window past 2^31 - 1.
        return b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + (2**31 - 1).to_bytes(4, "big")

    return script


def _garbage_frame(t: Target) -> Callable[[h2.connection.H2Connection], bytes]:
    # A DATA frame on stream 0, which RFC 9113 makes a connection error.
    return lambda conn: b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd"


def _continuation_flood(t: Target) -> Callable[[h2.connection.H2Connection], bytes]:
    """HEADERS without END_HEADERS, then CONTINUATION frames far past the header limit."""

    def script(conn: h2.connection.H2Connection) -> bytes:
        block = bytes([0x82, 0x86, 0x84, 0x41, 0x01, ord("x")])  # GET http / :authority x
        out = len(block).to_bytes(3, "big") + b"\x01\x00" + (1).to_bytes(4, "big") + block
        filler = bytes([0x40, 0x01, ord("a"), 0x7F, 0x00]) + b"\x7f\x80\x01" + b"b" * 16_000
        for _ in range(40):  # 640 KB of header block
            out += len(filler).to_bytes(3, "big") + b"\x09\x00" + (1).to_bytes(4, "big")
            out += filler
        return out

    return script


def _flood_of_empty_continuations(t: Target) -> list[bytes]:
    return [frame(0x1, b"{", fin=False)] + [frame(0x0, b"", fin=False) * 5000] * 20


# HTTP/1.1 and the RFC 8030 push API -----------------------------------------------------------

HTTP: list[Case] = [
    Case(
        "missing-ttl",
        "rfc8030",
        "a push without `TTL`",
        raw(lambda t: request("POST", t.open_path, [("content-encoding", "aes128gcm")], t.body())),
        Answer(400, 111),
    ),
    Case(
        "duplicated-ttl",
        "rfc8030",
        "`TTL` given twice",
        raw(lambda t: push(t, ("ttl", "60"), ("ttl", "60"))),
        Answer(400, 111),
    ),
    Case(
        "negative-ttl",
        "rfc8030",
        "`TTL: -1`",
        raw(lambda t: push(t, ("ttl", "-1"))),
        Answer(400, 111),
    ),
    Case(
        "fractional-ttl",
        "rfc8030",
        "`TTL: 1.5`",
        raw(lambda t: push(t, ("ttl", "1.5"))),
        Answer(400, 111),
    ),
    Case(
        "duplicated-urgency",
        "rfc8030",
        "two `Urgency` headers",
        raw(lambda t: push(t, ("urgency", "low"), ("urgency", "high"))),
        Answer(400, 112),
    ),
    Case(
        "unknown-urgency",
        "rfc8030",
        "`Urgency: asap`",
        raw(lambda t: push(t, ("urgency", "asap"))),
        Answer(400, 112),
    ),
    Case(
        "duplicated-topic",
        "rfc8030",
        "two `Topic` headers",
        raw(lambda t: push(t, ("topic", "a"), ("topic", "b"))),
        Answer(400, 113),
    ),
    Case(
        "long-topic",
        "rfc8030",
        "a 33-character `Topic`",
        raw(lambda t: push(t, ("topic", "a" * 33))),
        Answer(400, 113),
    ),
    Case(
        "topic-outside-base64url",
        "rfc8030",
        "`Topic: a b/c`",
        raw(lambda t: push(t, ("topic", "a b/c"))),
        Answer(400, 113),
    ),
    Case(
        "oversized-header",
        "http/1.1",
        "a 20,000-byte header",
        raw(lambda t: push(t, ("x-filler", "a" * 20_000))),
        Answer(431, 400),
    ),
    Case(
        "oversized-body",
        "rfc8030",
        "a body one byte over max_body (answered before it is read)",
        raw(
            lambda t: request(
                "POST",
                t.open_path,
                [("ttl", "60"), ("content-encoding", "aes128gcm")],
                os.urandom(ServiceConfig().max_body + 1),
            )
        ),
        Answer(413, 104),
    ),
    Case(
        "body-without-encoding",
        "rfc8030",
        "a body without `Content-Encoding`",
        raw(lambda t: request("POST", t.open_path, [("ttl", "60")], b"x" * 40)),
        Answer(400, 110),
    ),
    Case(
        "unknown-encoding",
        "rfc8030",
        "`Content-Encoding: gzip`",
        raw(
            lambda t: request(
                "POST", t.open_path, [("ttl", "60"), ("content-encoding", "gzip")], b"x" * 40
            )
        ),
        Answer(400, 110),
    ),
    Case(
        "aes128gcm-without-a-record",
        "rfc8030",
        "an `aes128gcm` body of 10 bytes",
        raw(
            lambda t: request(
                "POST", t.open_path, [("ttl", "60"), ("content-encoding", "aes128gcm")], b"x" * 10
            )
        ),
        Answer(400, 114),
    ),
    Case(
        "aesgcm-without-headers",
        "rfc8030",
        "an `aesgcm` body without `Encryption` and `Crypto-Key`",
        raw(
            lambda t: request(
                "POST", t.open_path, [("ttl", "60"), ("content-encoding", "aesgcm")], b"x" * 40
            )
        ),
        Answer(400, 110),
    ),
    Case(
        "aesgcm-oversized-headers",
        "rfc8030",
        "an `aesgcm` push with an 8,000-byte `Encryption` header (relayed to the user agent)",
        raw(
            lambda t: request(
                "POST",
                t.open_path,
                [
                    ("ttl", "60"),
                    ("content-encoding", "aesgcm"),
                    ("encryption", "salt=" + "A" * 22 + ";x=" + "a" * 8000),
                    ("crypto-key", "dh=B" + "A" * 86),
                ],
                b"x" * 40,
            )
        ),
        Answer(400, 118),
    ),
    Case(
        "bad-content-length",
        "http/1.1",
        "`Content-Length: 1x`",
        raw(
            lambda t: (
                b"POST "
                + t.open_path.encode()
                + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 1x\r\n\r\n"
            )
        ),
        Answer(400, 400),
    ),
    Case(
        "content-length-and-chunked",
        "http/1.1",
        "`Content-Length` and `Transfer-Encoding: chunked` (request smuggling)",
        raw(
            lambda t: (
                b"POST "
                + t.open_path.encode()
                + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n"
                + b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            )
        ),
        Answer(400, 400),
    ),
    Case(
        "two-content-lengths",
        "http/1.1",
        "two different `Content-Length` headers",
        raw(
            lambda t: (
                b"POST "
                + t.open_path.encode()
                + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"
            )
        ),
        Answer(400, 400),
    ),
    Case(
        "huge-chunk",
        "http/1.1",
        "a chunk of 2^64 - 1 bytes announced, then more of it than a refused body is drained",
        raw(
            lambda t: (
                b"POST "
                + t.open_path.encode()
                + b" HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\n"
                # h1.py drains a refused body up to 4 x max_body + 64 KiB, then cuts.
                + b"x" * (ServiceConfig().max_body * 4 + 65536 + 1000)
            )
        ),
        Answer(413, 104),
    ),
    Case(
        "folded-header",
        "http/1.1",
        "an obsolete folded header line",
        raw(lambda t: b"GET /health HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\n\r\n"),
        Answer(400, 400),
    ),
    Case(
        "nul-in-header",
        "http/1.1",
        "a NUL byte in a header value",
        raw(lambda t: b"GET /health HTTP/1.1\r\nhost: x\x00y\r\n\r\n"),
        Answer(400, 400),
    ),
    Case(
        "control-in-method",
        "http/1.1",
        "a control character in the method",
        raw(lambda t: b"G\x01T / HTTP/1.1\r\nhost: x\r\n\r\n"),
        Answer(400, 400),
    ),
    Case(
        "bad-request-url",
        "http/1.1",
        "`GET http://a:99999999/` (a URL that does not parse)",
        raw(lambda t: b"GET http://a:99999999/ HTTP/1.1\r\nhost: x\r\n\r\n"),
        Answer(400, 400),
    ),
    Case(
        "tampered-endpoint",
        "rfc8030",
        "an endpoint token with one character changed",
        raw(lambda t: push(t, path=tampered(t.open_path))),
        Answer(404, 102),
    ),
    Case(
        "truncated-endpoint",
        "rfc8030",
        "an endpoint token missing its last 6 characters",
        raw(lambda t: push(t, path=t.open_path[:-6])),
        Answer(404, 102),
    ),
    Case(
        "extended-endpoint",
        "rfc8030",
        "an endpoint token with characters added",
        raw(lambda t: push(t, path=t.open_path + "AA")),
        Answer(404, 102),
    ),
    Case(
        "endpoint-of-another-service",
        "rfc8030",
        "a well-formed endpoint sealed with another service's key",
        raw(_foreign_endpoint),
        Answer(404, 102),
    ),
    Case(
        "message-token-as-endpoint",
        "rfc8030",
        "a message resource token pushed to as an endpoint",
        raw(lambda t: push(t, path="/push/" + t.message_path.rsplit("/", 1)[-1])),
        Answer(404, 102),
    ),
    Case(
        "restricted-without-vapid",
        "rfc8030",
        "a push to a restricted subscription without `Authorization`",
        raw(lambda t: push(t, path=t.restricted_path)),
        Answer(401, 109),
    ),
    Case(
        "vapid-alg-none",
        "rfc8030",
        'a JWT with `"alg": "none"` and no signature',
        raw(_alg_none),
        Answer(403, 108),
    ),
    Case(
        "vapid-expired",
        "rfc8030",
        "`exp` an hour ago",
        raw(lambda t: push(t, vapid(t, exp=int(time.time()) - 3600), path=t.restricted_path)),
        Answer(403, 108),
    ),
    Case(
        "vapid-far-future",
        "rfc8030",
        "`exp` a week ahead (over 24 hours)",
        raw(lambda t: push(t, vapid(t, exp=int(time.time()) + 7 * 86400), path=t.restricted_path)),
        Answer(403, 108),
    ),
    Case(
        "vapid-infinite-exp",
        "rfc8030",
        "`exp` 1e400 (infinity once parsed)",
        raw(lambda t: push(t, vapid(t, exp=float("inf")), path=t.restricted_path)),
        Answer(403, 108),
    ),
    Case(
        "vapid-wrong-aud",
        "rfc8030",
        "`aud` another origin",
        raw(lambda t: push(t, vapid(t, aud="https://elsewhere.example"), path=t.restricted_path)),
        Answer(403, 108),
    ),
    Case(
        "vapid-key-off-curve",
        "rfc8030",
        "`k=` 65 bytes that are not a P-256 point",
        raw(_off_curve),
        Answer(403, 108),
    ),
    Case(
        "vapid-garbage",
        "rfc8030",
        "`vapid t=..., k=...`",
        raw(lambda t: push(t, ("authorization", "vapid t=..., k=..."), path=t.restricted_path)),
        Answer(403, 108),
    ),
    Case(
        "vapid-other-key",
        "rfc8030",
        "a valid token signed by a key other than the subscription's",
        raw(_other_key),
        Answer(403, 107),
    ),
    Case(
        "tampered-message",
        "rfc8030",
        "`DELETE` of a message token with one character changed",
        raw(lambda t: request("DELETE", tampered(t.message_path), [])),
        Answer(404, 102),
    ),
    Case(
        "endpoint-token-as-message",
        "rfc8030",
        "`DELETE /m/` with an endpoint token",
        raw(lambda t: request("DELETE", "/m/" + t.open_path.rsplit("/", 1)[-1], [])),
        Answer(404, 102),
    ),
    Case(
        "message-of-another-service",
        "rfc8030",
        "`DELETE` of a message token sealed with another service's key",
        raw(_foreign_message),
        Answer(404, 102),
    ),
    Case(
        "message-of-another-agent",
        "rfc8030",
        "`DELETE` of a token naming another user agent with this message's id (sealed with "
        "the service's own key, as a bug might)",
        raw(_message_of_another_agent),
        Answer(404, 404),
    ),
    Case(
        "receipt-link-of-nobody",
        "rfc8030",
        "`Link` to a receipt subscription that is not this service's",
        raw(lambda t: push(t, ("link", '</r/AAAA>; rel="urn:ietf:params:push:receipt"'))),
        Answer(400, 115),
    ),
    Case(
        "push-with-get",
        "rfc8030",
        "`GET` of a push resource",
        raw(lambda t: request("GET", t.open_path, [])),
        Answer(405, 405),
    ),
    Case(
        "message-with-get",
        "rfc8030",
        "`GET` of a message resource (its status) without a VAPID token",
        raw(lambda t: request("GET", t.message_path, [])),
        Answer(401, 109),
    ),
    Case(
        "cors-preflight-on-push",
        "rfc8030",
        "`OPTIONS` with `Origin` and `Access-Control-Request-Method: POST`",
        raw(
            lambda t: request(
                "OPTIONS",
                t.open_path,
                [
                    ("origin", "https://evil.example"),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "ttl"),
                ],
            )
        ),
        Answer(204),
    ),
    Case(
        "subscribe-deeply-nested-json",
        "rfc8030",
        "`POST /subscribe` with 5,000 nested JSON arrays",
        raw(
            lambda t: request(
                "POST", "/subscribe", [("content-type", "application/json")], b"[" * 5000
            )
        ),
        Answer(400, 114),
    ),
    Case(
        "subscribe-not-an-object",
        "rfc8030",
        "`POST /subscribe` with a JSON array",
        raw(lambda t: request("POST", "/subscribe", [("content-type", "application/json")], b"[]")),
        Answer(400, 114),
    ),
    Case(
        "subscribe-as-text",
        "rfc8030",
        "`POST /subscribe` as `text/plain` (what a cross-site form can send)",
        raw(lambda t: request("POST", "/subscribe", [("content-type", "text/plain")], b"{}")),
        Answer(415, 110),
    ),
    Case(
        "subscribe-bad-key",
        "rfc8030",
        '`POST /subscribe` with `{"vapid": "xyz"}`',
        raw(
            lambda t: request(
                "POST", "/subscribe", [("content-type", "application/json")], b'{"vapid": "xyz"}'
            )
        ),
        Answer(400, 114),
    ),
    Case(
        "tampered-subscription",
        "rfc8030",
        "`GET /s/` of a token that does not open",
        raw(lambda t: request("GET", "/s/" + "A" * 60, [])),
        Answer(404, 102),
    ),
    Case(
        "tampered-receipt-subscription",
        "rfc8030",
        "`GET /r/` of a token that does not open",
        raw(lambda t: request("GET", "/r/" + "A" * 60, [])),
        Answer(404, 102),
    ),
    Case(
        "tampered-set",
        "rfc8030",
        "`GET /set/` of a token that does not open",
        raw(lambda t: request("GET", "/set/" + "A" * 60, [])),
        Answer(404, 102),
    ),
    *(
        Case(
            f"{name}-for-a-foreign-host",
            "http/1.1",
            f"`GET {path}` with `Host: evil.example` (DNS rebinding)",
            raw(lambda t, path=path: http_request("GET", path, [], host="evil.example")),
            Refused(),
        )
        for name, path in (("stats", "/api/stats"), ("metrics", "/metrics"))
    ),
    Case(
        "demo-send-as-text",
        "http/1.1",
        "`POST /demo/send` as `text/plain` from another origin (a cross-site form)",
        raw(
            lambda t: request(
                "POST",
                "/demo/send",
                [("content-type", "text/plain"), ("origin", "https://evil.example")],
                json.dumps({"subscription": t.open.subscription_info(), "dryRun": True}).encode(),
            )
        ),
        Refused(),
    ),
    Case(
        "demo-key-without-a-path",
        "http/1.1",
        "`GET /api/demo/key`: the answer must name no file system path",
        raw(lambda t: request("GET", "/api/demo/key", [])),
        Answer(200),
    ),
    Case(
        "websocket-bad-key",
        "websocket",
        "a WebSocket upgrade with a malformed `Sec-WebSocket-Key`",
        raw(
            lambda t: request(
                "GET",
                "/",
                [
                    ("upgrade", "websocket"),
                    ("connection", "Upgrade"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "short"),
                ],
            )
        ),
        Answer(400, 400),
    ),
    Case(
        "websocket-version-12",
        "websocket",
        "a WebSocket upgrade with `Sec-WebSocket-Version: 12`",
        raw(
            lambda t: request(
                "GET",
                "/",
                [*WEBSOCKET_UPGRADE[:2], ("sec-websocket-version", "12"), WEBSOCKET_UPGRADE[3]],
            )
        ),
        Answer(426, 400),
    ),
    Case(
        "websocket-elsewhere",
        "websocket",
        "a WebSocket upgrade of `/x`",
        raw(lambda t: request("GET", "/x", WEBSOCKET_UPGRADE)),
        Answer(404, 400),
    ),
    Case(
        "websocket-with-post",
        "websocket",
        "a WebSocket upgrade with `POST`",
        raw(lambda t: request("POST", "/", WEBSOCKET_UPGRADE)),
        Answer(400, 400),
    ),
    Case(
        "unknown-upgrade",
        "http/1.1",
        "`Upgrade: h2c` (not supported: HTTP/2 is by prior knowledge or ALPN)",
        raw(
            lambda t: request(
                "GET",
                "/",
                [
                    ("upgrade", "h2c"),
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
                ],
            )
        ),
        Answer(400, 400),
    ),
    Case(
        "unknown-path",
        "http/1.1",
        "`GET /../../etc/passwd`",
        raw(lambda t: request("GET", "/../../etc/passwd", [])),
        Answer(404, 404),
    ),
]

# HTTP/2 ------------------------------------------------------------------------------------

HTTP2: list[Case] = [
    Case(
        "h2-missing-ttl",
        "http/2",
        "a push without `TTL`",
        over_h2(
            lambda t: h2_request("POST", t.open_path, [("content-encoding", "aes128gcm")], t.body())
        ),
        Answer(400, 111),
    ),
    Case(
        "h2-tampered-endpoint",
        "http/2",
        "a push to an endpoint token with one character changed",
        over_h2(
            lambda t: h2_request(
                "POST",
                tampered(t.open_path),
                [("ttl", "60"), ("content-encoding", "aes128gcm")],
                t.body(),
            )
        ),
        Answer(404, 102),
    ),
    Case(
        "h2-oversized-body",
        "http/2",
        "a push body one byte over max_body",
        over_h2(
            lambda t: h2_request(
                "POST",
                t.open_path,
                [("ttl", "60"), ("content-encoding", "aes128gcm")],
                os.urandom(ServiceConfig().max_body + 1),
            )
        ),
        Answer(413, 104),
    ),
    Case(
        "h2-restricted-without-vapid",
        "http/2",
        "a push to a restricted subscription without `Authorization`",
        over_h2(
            lambda t: h2_request(
                "POST",
                t.restricted_path,
                [("ttl", "60"), ("content-encoding", "aes128gcm")],
                t.body(),
            )
        ),
        Answer(401, 109),
    ),
    Case(
        "h2-authorization-not-utf8",
        "http/2",
        "an `Authorization` value of bytes that are not UTF-8",
        over_h2(
            lambda t: h2_request(
                "POST",
                t.restricted_path,
                [
                    ("ttl", "60"),
                    ("content-encoding", "aes128gcm"),
                    ("authorization", "vapid t=\xff\xfe, k=\xff"),
                ],
                t.body(),
            )
        ),
        Answer(403, 108),
    ),
    Case(
        "h2-unknown-path",
        "http/2",
        "`GET /../../etc/passwd`",
        over_h2(lambda t: h2_request("GET", "/../../etc/passwd")),
        Answer(404, 404),
    ),
    Case(
        "h2-data-on-stream-0",
        "http/2",
        "a DATA frame on stream 0",
        over_h2(_garbage_frame),
        GoAway(h2.errors.ErrorCodes.PROTOCOL_ERROR),
    ),
    Case(
        "h2-window-overflow",
        "http/2",
        "a WINDOW_UPDATE taking the connection window past 2^31 - 1",
        over_h2(_window_overflow),
        GoAway(h2.errors.ErrorCodes.FLOW_CONTROL_ERROR),
    ),
    Case(
        "h2-too-many-streams",
        "http/2",
        "200 streams opened and never finished (100 allowed): the last one",
        over_h2(_too_many_streams, TOO_MANY_STREAMS_LAST),
        Reset(h2.errors.ErrorCodes.REFUSED_STREAM),
    ),
    Case(
        "h2-continuation-flood",
        "http/2",
        "a header block of 640 KB in CONTINUATION frames (16 KiB allowed)",
        over_h2(_continuation_flood),
        GoAway(h2.errors.ErrorCodes.PROTOCOL_ERROR),
    ),
    Case(
        "h2-rapid-reset",
        "http/2",
        "2,000 streams each opened and reset at once (CVE-2023-44487)",
        over_h2(_rapid_reset, RAPID_RESET_LAST),
        GoAway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM),
    ),
]

# WebSocket framing and the Firefox protocol ---------------------------------------------------

WEBSOCKET: list[Case] = [
    Case(
        "ws-unmasked-frame",
        "websocket",
        "a client frame without a mask",
        ws([frame(0x1, b"{}", masked=False)]),
        Closed(1002),
    ),
    Case(
        "ws-reserved-bits",
        "websocket",
        "RSV1 set with no extension agreed",
        ws([frame(0x1, b"{}", rsv=4)]),
        Closed(1002),
    ),
    Case(
        "ws-unknown-opcode",
        "websocket",
        "opcode 3",
        ws([frame(0x3, b"")]),
        Closed(1002),
    ),
    Case(
        "ws-binary-frame",
        "websocket",
        "a binary message",
        ws([frame(0x2, b"\x00\x01")]),
        Closed(1003),
    ),
    Case(
        "ws-text-not-utf8",
        "websocket",
        "a text frame holding a lone surrogate's bytes",
        ws([frame(0x1, b"\xed\xa0\x80")]),
        Closed(1007),
    ),
    Case(
        "ws-utf8-split-across-fragments",
        "websocket",
        "`{}` with a character split between two fragments (valid: must be joined)",
        ws([frame(0x1, b'{"x":"\xc3', fin=False), frame(0x0, b'\xa9"}')], probe_text=True),
        Closed(1008),  # valid UTF-8 once joined; then it is a frame without messageType
    ),
    Case(
        "ws-continuation-first",
        "websocket",
        "a continuation frame with no message to continue",
        ws([frame(0x0, b"x")]),
        Closed(1002),
    ),
    Case(
        "ws-text-inside-a-fragmented-message",
        "websocket",
        "a new text frame before the fragmented one ends",
        ws([frame(0x1, b"{", fin=False), frame(0x1, b"}")]),
        Closed(1002),
    ),
    Case(
        "ws-fragmented-ping",
        "websocket",
        "a ping without FIN",
        ws([frame(0x9, b"p", fin=False)]),
        Closed(1002),
    ),
    Case(
        "ws-long-ping",
        "websocket",
        "a ping of 126 bytes (control frames hold at most 125)",
        ws([frame(0x9, b"p" * 126)]),
        Closed(1002),
    ),
    Case(
        "ws-close-one-byte",
        "websocket",
        "a close frame with a one-byte payload",
        ws([frame(0x8, b"\x03")]),
        Closed(1002),
    ),
    Case(
        "ws-close-reserved-code",
        "websocket",
        "a close frame with code 999",
        ws([frame(0x8, b"\x03\xe7")]),
        Closed(1002),
    ),
    Case(
        "ws-close-reason-not-utf8",
        "websocket",
        "a close frame whose reason is not UTF-8",
        ws([frame(0x8, b"\x03\xe8\xff\xfe")]),
        Closed(1007),
    ),
    Case(
        "ws-length-2e63",
        "websocket",
        "a frame declaring 2^63 - 1 bytes",
        ws([b"\x81\xff" + (2**63 - 1).to_bytes(8, "big") + b"mask"]),
        Closed(1009),
    ),
    Case(
        "ws-oversized-message",
        "websocket",
        "a 70,000-byte text message in 5 fragments (64 KiB allowed)",
        ws(
            [frame(0x1, b"[" + b" " * 14_000, fin=False)]
            + [frame(0x0, b" " * 14_000, fin=False)] * 3
            + [frame(0x0, b" " * 14_000 + b"]")]
        ),
        Closed(1009),
    ),
    Case(
        "ws-empty-continuation-flood",
        "websocket",
        "100,000 empty continuation frames of one message",
        ws(_flood_of_empty_continuations),
        Closed(None),
    ),
    Case(
        "ff-first-message-not-hello",
        "firefox",
        "`register` before `hello`",
        ff([text({"messageType": "register", "channelID": U})], hello=False),
        Closed(1008),
    ),
    Case(
        "ff-hello-twice",
        "firefox",
        "a second `hello`",
        ff([text({"messageType": "hello", "use_webpush": True})]),
        Closed(1008),
    ),
    Case(
        "ff-not-json",
        "firefox",
        "a text frame that is not JSON",
        ff([text("hello?")]),
        Closed(1007),
    ),
    Case(
        "ff-not-an-object",
        "firefox",
        "a JSON array",
        ff([text("[1, 2]")]),
        Closed(1007),
    ),
    Case(
        "ff-deeply-nested-json",
        "firefox",
        "5,000 nested JSON arrays",
        ff([text("[" * 5000 + "]" * 5000)]),
        Closed(1007),
    ),
    Case(
        "ff-no-message-type",
        "firefox",
        '`{"uaid": 5}`',
        ff([text({"uaid": 5})]),
        Closed(1008),
    ),
    Case(
        "ff-unknown-message-type",
        "firefox",
        '`{"messageType": "shutdown"}`',
        ff([text({"messageType": "shutdown"})]),
        Closed(1008),
    ),
    Case(
        "ff-ack-without-updates",
        "firefox",
        '`{"messageType": "ack", "updates": 5}`',
        ff([text({"messageType": "ack", "updates": 5})]),
        Closed(1008),
    ),
    Case(
        "ff-hello-with-a-bad-uaid",
        "firefox",
        "`hello` with a uaid the service could not have issued (a new one is given)",
        ff([text({"messageType": "hello", "uaid": "../../etc", "use_webpush": True})], hello=False),
        Ignored(),
    ),
    Case(
        "ff-register-bad-channel",
        "firefox",
        "`register` with a channel id that is not a UUID",
        ff([text({"messageType": "register", "channelID": "../../x"})]),
        Ignored(reply=400),
    ),
    Case(
        "ff-register-bad-key",
        "firefox",
        "`register` with a `key` that is not a P-256 public key",
        ff([text({"messageType": "register", "channelID": U, "key": "AAAA"})]),
        Ignored(reply=400),
    ),
    Case(
        "ff-unregister-unknown",
        "firefox",
        "`unregister` of a channel this user agent does not have",
        ff([text({"messageType": "unregister", "channelID": U})]),
        Ignored(),
    ),
    Case(
        "ff-ack-unknown",
        "firefox",
        "`ack` of message ids never sent, with odd codes",
        ff(
            [
                text(
                    {
                        "messageType": "ack",
                        "updates": [{"channelID": U, "version": "x" * 500, "code": True}, 7, None],
                    }
                )
            ]
        ),
        Ignored(),
    ),
    Case(
        "ff-nack-garbage",
        "firefox",
        "`nack` with a version of 10,000 characters and a string code",
        ff([text({"messageType": "nack", "version": "\n" * 10_000, "code": "x"})]),
        Ignored(),
    ),
    Case(
        "ff-broadcast-not-an-object",
        "firefox",
        "`broadcast_subscribe` with a list of broadcasts",
        ff([text({"messageType": "broadcast_subscribe", "broadcasts": [1, 2]})]),
        Ignored(),
    ),
]

CORPUS: list[Case] = HTTP + HTTP2 + WEBSOCKET


# Running the corpus -------------------------------------------------------------------------


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Target]:
    async with running_service(tmp_path, demo=True) as running:
        key = VapidKey.generate()
        agent = await running.agent()
        open_registration = await agent.register()
        restricted = await agent.register(key.public_key_b64)
        other = await running.agent()
        await other.register()
        await agent.close()  # messages stay stored
        keys = open_registration.subscription_info()["keys"]
        body = encrypt(b"stored", keys["p256dh"], keys["auth"])
        path = "/push/" + open_registration.endpoint.rsplit("/", 1)[-1]
        stored = await send_http(
            running.config.port,
            request("POST", path, [("ttl", "600"), ("content-encoding", "aes128gcm")], body),
        )
        assert stored.status == 201
        message_path = "/m/" + stored.headers["location"].rsplit("/m/", 1)[-1]
        assert other.uaid is not None
        yield Target(
            running, agent, open_registration, restricted, key, message_path, other.uaid, tmp_path
        )
        await other.close()


async def tasks_settle(baseline: int) -> None:
    """Wait until the loop runs no more tasks than `baseline` (no leaked connection)."""
    async with asyncio.timeout(20):
        while len(asyncio.all_tasks()) > baseline:
            await asyncio.sleep(0.05)


def check_no_leak(got: Outcome, tmp_path: Path) -> None:
    if got.status is not None:
        assert got.status < 500, (got.status, got.body[:300])
        if got.status >= 400 and got.headers.get("content-type", "") == "application/json":
            document = got.json()
            assert {"code", "errno", "error", "message"} <= set(document), document
    for name in got.headers:
        assert not name.startswith("access-control-"), got.headers  # no CORS grant anywhere
    assert str(tmp_path).encode() not in got.body  # no file system path


@pytest.mark.parametrize("case", [c.param() for c in CORPUS])
async def test_hostile_input(target: Target, case: Case) -> None:
    baseline = len(asyncio.all_tasks())
    got = await case.send(target)
    check_no_leak(got, target.tmp_path)
    case.expect.check(got)
    # Whatever was tried, the service still serves and the stored message is still there.
    health = await send_http(target.port, request("GET", "/health", []))
    assert health.status == 200, health
    service = target.running.service
    assert service is not None and target.agent.uaid is not None
    assert len(await service.pending(target.agent.uaid)) == 1
    await tasks_settle(baseline)


# The cluster bus ------------------------------------------------------------------------------

BUS_MESSAGE = {
    "t": "m",
    "id": "m" * 32,
    "ua": "a" * 32,
    "ch": U,
    "b": "",
    "ttl": 60,
    "c": 1.0,
    "e": 61.0,
    "u": "normal",
    "tp": None,
    "h": {},
    "r": None,
}


def bus(payload: bytes | str | dict[str, object]) -> bytes:
    if isinstance(payload, dict):
        return json.dumps(BUS_MESSAGE | payload).encode()
    return payload.encode() if isinstance(payload, str) else payload


@dataclass(frozen=True)
class BusCase:
    name: str
    what: str
    payload: bytes
    hole: str | None = None
    protocol: str = "bus"

    @property
    def expect(self) -> Delivered:
        return Delivered()

    def param(self) -> object:
        marks = [pytest.mark.xfail(strict=True, reason=self.hole)] if self.hole else []
        return pytest.param(self, marks=marks, id=self.name)


BUS: list[BusCase] = [
    BusCase("bus-not-json", "bytes that are not JSON", b"\xff\xfe{"),
    BusCase("bus-not-an-object", "a JSON array", b"[1, 2, 3]"),
    BusCase("bus-unknown-kind", '`{"t": "x"}`', bus('{"t": "x"}')),
    BusCase("bus-missing-fields", "a message without its ids", bus('{"t": "m", "ttl": 60}')),
    BusCase("bus-body-not-base64", "a message body that is not base64", bus({"b": "@@@"})),
    BusCase("bus-ttl-nan", "a message with `ttl` NaN", bus(b'{"t":"m","ttl":NaN}')),
    BusCase(
        "bus-ttl-infinity",
        "a message with `ttl` Infinity",
        bus(json.dumps(BUS_MESSAGE | {"ttl": float("inf")})),
    ),
    BusCase(
        "bus-deeply-nested-json",
        "5,000 nested JSON arrays",
        b"[" * 5000 + b"]" * 5000,
    ),
]


@pytest.mark.redis
@pytest.mark.parametrize("case", [c.param() for c in BUS])
async def test_hostile_bus_message(tmp_path: Path, case: BusCase) -> None:
    """A message published on a node's Redis channel: dropped, and the listener carries on
    (the next message is delivered, /health says ok, the node stops cleanly)."""
    import redis.asyncio as aioredis

    from store.engines import delete_prefix, redis_url, require_redis

    require_redis()
    url = redis_url()
    base, _, prefix = url.partition("?prefix=")
    client = aioredis.from_url(base)
    try:
        async with running_service(tmp_path, cluster=url, node_id="hostile") as running:
            agent = await running.agent()
            registration = await agent.register()
            channel = f"{prefix}node:hostile"
            await client.publish(channel, case.payload)
            # The listener handles messages in order: the next one shows it survived.
            now = time.time()
            good = BUS_MESSAGE | {
                "ua": agent.uaid,
                "ch": registration.channel_id,
                "c": now,
                "e": now + 600,
            }
            await client.publish(channel, json.dumps(good))
            try:
                notification = await agent.expect("notification", timeout=10)
            except TimeoutError:
                got = Outcome("closed")
            else:
                assert notification["version"] == "m" * 32
                got = Outcome("open")
            health = await send_http(running.config.port, request("GET", "/health", []))
            assert health.status == 200, health
            await agent.close()
            case.expect.check(got)
    finally:
        await delete_prefix(url)
        await client.aclose()


# The Hyperty element --------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementCase:
    name: str
    what: str
    build: Callable[[], bytes]
    expect: Answer
    hole: str | None = None
    protocol: str = "hyperty"

    def param(self) -> object:
        marks = [pytest.mark.xfail(strict=True, reason=self.hole)] if self.hole else []
        return pytest.param(self, marks=marks, id=self.name)


def post_message(body: bytes) -> Callable[[], bytes]:
    return lambda: request(
        "POST", "/hyperty/messages", [("content-type", "application/json")], body
    )


def message(**fields: object) -> bytes:
    document: dict[str, object] = {
        "id": 1,
        "type": "create",
        "from": "hyperty://example.com/alice",
        "to": "hyperty://example.com/bob",
        "body": {},
    }
    return json.dumps(document | fields).encode()


ELEMENT: list[ElementCase] = [
    ElementCase(
        "hyperty-not-json", "a message that is not JSON", post_message(b"{"), Answer(400, 302)
    ),
    ElementCase(
        "hyperty-deeply-nested-json",
        "a message of 5,000 nested JSON arrays",
        post_message(b"[" * 5000 + b"]" * 5000),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-missing-fields",
        "a message without `from` and `to`",
        post_message(b'{"id": 1, "type": "create"}'),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-lone-surrogate",
        "a message with a lone UTF-16 surrogate (`\\ud800`) in a field name",
        post_message(
            b'{"id": 1, "type": "create", "from": "hyperty://a/b", "to": "hyperty://a/c", '
            b'"x\\ud800": 1}'
        ),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-negative-id",
        "a message with `id` -1",
        post_message(message(id=-1)),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-huge-id",
        "a message with `id` 1e400",
        post_message(message(id=float("inf"))),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-bad-address",
        "a message from `javascript:alert(1)`",
        post_message(message(**{"from": "javascript:alert(1)"})),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-unknown-type",
        'a message of type "launch"',
        post_message(message(type="launch")),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-oversized",
        "a message of 70,000 bytes (64 KiB allowed)",
        post_message(message(body={"value": "x" * 70_000})),
        Answer(413, 303),
    ),
    ElementCase(
        "hyperty-get-messages",
        "`GET /hyperty/messages`",
        lambda: request("GET", "/hyperty/messages", []),
        Answer(405, 305),
    ),
    ElementCase(
        "hyperty-inbox-without-address",
        "`GET /hyperty/inbox` without an address",
        lambda: request("GET", "/hyperty/inbox", []),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-inbox-bad-timeout",
        "`GET /hyperty/inbox?timeout=soon`",
        lambda: request("GET", "/hyperty/inbox?address=hyperty://example.com/a&timeout=soon", []),
        Answer(400, 302),
    ),
    ElementCase(
        "hyperty-unknown-path",
        "`GET /hyperty/../../etc/passwd`",
        lambda: request("GET", "/hyperty/../../etc/passwd", []),
        Answer(404, 301),
    ),
]


@pytest.fixture
async def element_port() -> AsyncIterator[int]:
    from tidings.hyperty import PushElement
    from tidings.hyperty.http import ElementApp, ElementServer
    from tidings.sender import RetryPolicy, Sender

    key = VapidKey.generate()
    async with Sender(key, "mailto:test@example.com", retry=RetryPolicy.none()) as sender:
        element = PushElement("example.com", sender, application_server_key=key.public_key_b64)
        async with ElementServer(ElementApp(element)) as server:
            yield server.port


@pytest.mark.parametrize("case", [c.param() for c in ELEMENT])
async def test_hostile_element_request(element_port: int, case: ElementCase) -> None:
    baseline = len(asyncio.all_tasks())
    got = await send_http(element_port, case.build())
    check_no_leak(got, Path("/nonexistent-path"))
    case.expect.check(got)
    assert got.json()["error"] and got.json()["message"]
    health = await send_http(element_port, request("GET", "/health", []))
    assert health.status == 200
    await tasks_settle(baseline)


# The documented table -------------------------------------------------------------------------


def test_the_corpus_is_large_and_wide() -> None:
    every = [*CORPUS, *BUS, *ELEMENT]
    names = [case.name for case in every]
    assert len(names) == len(set(names))
    assert len(every) >= 60
    protocols = {case.protocol for case in every}
    assert protocols == {
        "http/1.1",
        "http/2",
        "websocket",
        "firefox",
        "rfc8030",
        "bus",
        "hyperty",
    }


def test_the_documented_table_matches_the_corpus() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([a-z0-9-]+)` \| ([a-z0-9/.]+) \| .* \| ([^|]+) \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3].strip())
    expected = {c.name: (c.protocol, c.expect.text()) for c in [*CORPUS, *BUS, *ELEMENT]}
    assert rows == expected
