"""A corpus of hostile requests, each with the answer docs/security.md promises.

Every request goes over a real socket, byte for byte (so duplicated and oversized
headers reach the service as sent). The table in docs/security.md lists the same ids
with the same status and errno; a test checks that the two agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service.config import ServiceConfig
from tidings.service.tokens import EndpointRef, MessageRef, TokenSealer
from tidings.webpush import VapidKey, b64url_encode, encrypt, sign_vapid

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


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


def request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def push(target: Target, *headers: tuple[str, str], path: str | None = None) -> bytes:
    base = [("content-encoding", "aes128gcm")]
    if not any(name.lower() == "ttl" for name, _ in headers):
        base.append(("ttl", "60"))
    return request("POST", path or target.open_path, base + list(headers), target.body())


def jwt(header: dict[str, object], claims: dict[str, object], signature: bytes = b"") -> str:
    def part(document: dict[str, object]) -> str:
        return b64url_encode(json.dumps(document).encode())

    return f"{part(header)}.{part(claims)}.{b64url_encode(signature)}"


def vapid(target: Target, **claims: object) -> tuple[str, str]:
    """A VAPID header for the restricted subscription with `claims` changed."""
    good = sign_vapid(target.key, target.origin, "mailto:ops@example.net")
    header, payload, signature = good.token.split(".")
    document = json.loads(_b64(payload)) | claims
    token = jwt(json.loads(_b64(header)), document, _b64(signature))
    return ("authorization", f"vapid t={token}, k={good.public_key}")


def _b64(text: str) -> bytes:
    from tidings.webpush import b64url_decode

    return b64url_decode(text)


def tampered(path: str) -> str:
    token = path.rsplit("/", 1)[-1]
    middle = len(token) // 2
    swapped = "A" if token[middle] != "A" else "B"
    return path[: -len(token)] + token[:middle] + swapped + token[middle + 1 :]


OTHER_SERVICE = TokenSealer({1: TokenSealer.new_key()}, 1)


def _alg_none(t: Target) -> bytes:
    good = sign_vapid(t.key, t.origin, "mailto:ops@example.net")
    claims = json.loads(_b64(good.token.split(".")[1]))
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


CORPUS: list[tuple[str, Callable[[Target], bytes], int, int | None]] = [
    (
        "missing-ttl",
        lambda t: request("POST", t.open_path, [("content-encoding", "aes128gcm")], t.body()),
        400,
        111,
    ),
    ("duplicated-ttl", lambda t: push(t, ("ttl", "60"), ("ttl", "60")), 400, 111),
    ("negative-ttl", lambda t: push(t, ("ttl", "-1")), 400, 111),
    ("duplicated-urgency", lambda t: push(t, ("urgency", "low"), ("urgency", "high")), 400, 112),
    ("duplicated-topic", lambda t: push(t, ("topic", "a"), ("topic", "b")), 400, 113),
    ("long-topic", lambda t: push(t, ("topic", "a" * 33)), 400, 113),
    ("oversized-header", lambda t: push(t, ("x-filler", "a" * 20_000)), 431, 400),
    (
        "oversized-body",
        lambda t: request(
            "POST",
            t.open_path,
            [("ttl", "60"), ("content-encoding", "aes128gcm")],
            os.urandom(ServiceConfig().max_body + 1),
        ),
        413,
        104,
    ),
    (
        "body-without-encoding",
        lambda t: request("POST", t.open_path, [("ttl", "60")], b"x" * 40),
        400,
        110,
    ),
    (
        "bad-content-length",
        lambda t: (
            b"POST " + t.open_path.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 1x\r\n\r\n"
        ),
        400,
        400,
    ),
    ("tampered-endpoint", lambda t: push(t, path=tampered(t.open_path)), 404, 102),
    ("truncated-endpoint", lambda t: push(t, path=t.open_path[:-6]), 404, 102),
    ("extended-endpoint", lambda t: push(t, path=t.open_path + "AA"), 404, 102),
    ("endpoint-of-another-service", _foreign_endpoint, 404, 102),
    (
        "message-token-as-endpoint",
        lambda t: push(t, path="/push/" + t.message_path.rsplit("/", 1)[-1]),
        404,
        102,
    ),
    ("restricted-without-vapid", lambda t: push(t, path=t.restricted_path), 401, 109),
    ("vapid-alg-none", _alg_none, 403, 108),
    (
        "vapid-expired",
        lambda t: push(t, vapid(t, exp=int(time.time()) - 3600), path=t.restricted_path),
        403,
        108,
    ),
    (
        "vapid-far-future",
        lambda t: push(t, vapid(t, exp=int(time.time()) + 7 * 86400), path=t.restricted_path),
        403,
        108,
    ),
    (
        "vapid-wrong-aud",
        lambda t: push(t, vapid(t, aud="https://elsewhere.example"), path=t.restricted_path),
        403,
        108,
    ),
    ("vapid-key-off-curve", _off_curve, 403, 108),
    (
        "vapid-garbage",
        lambda t: push(t, ("authorization", "vapid t=..., k=..."), path=t.restricted_path),
        403,
        108,
    ),
    ("vapid-other-key", _other_key, 403, 107),
    ("tampered-message", lambda t: request("DELETE", tampered(t.message_path), []), 404, 102),
    (
        "endpoint-token-as-message",
        lambda t: request("DELETE", "/m/" + t.open_path.rsplit("/", 1)[-1], []),
        404,
        102,
    ),
    ("message-of-another-service", _foreign_message, 404, 102),
    ("message-of-another-agent", _message_of_another_agent, 404, 404),
    (
        "receipt-link-of-nobody",
        lambda t: push(t, ("link", '</r/AAAA>; rel="urn:ietf:params:push:receipt"')),
        400,
        115,
    ),
    ("push-with-get", lambda t: request("GET", t.open_path, []), 405, 405),
    (
        "cors-preflight-on-push",
        lambda t: request(
            "OPTIONS",
            t.open_path,
            [
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "ttl"),
            ],
        ),
        204,
        None,
    ),
    (
        "websocket-bad-key",
        lambda t: request(
            "GET",
            "/",
            [
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "short"),
            ],
        ),
        400,
        400,
    ),
    ("unknown-path", lambda t: request("GET", "/../../etc/passwd", []), 404, 404),
]


async def send_raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    writer.close()
    return status, headers, body


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Target]:
    async with running_service(tmp_path) as running:
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
        status, headers, _ = await send_raw(
            running.config.port,
            request("POST", path, [("ttl", "600"), ("content-encoding", "aes128gcm")], body),
        )
        assert status == 201
        message_path = "/m/" + headers["location"].rsplit("/m/", 1)[-1]
        assert other.uaid is not None
        yield Target(running, agent, open_registration, restricted, key, message_path, other.uaid)
        await other.close()


@pytest.mark.parametrize(("name", "build", "status", "errno"), CORPUS, ids=[c[0] for c in CORPUS])
async def test_hostile_request(
    target: Target, name: str, build: Callable[[Target], bytes], status: int, errno: int | None
) -> None:
    got, headers, body = await send_raw(target.running.config.port, build(target))
    assert got == status, body
    if errno is not None:
        document = json.loads(body)
        assert document["errno"] == errno, document
        assert document["code"] == status
        assert document["message"]
    for name_ in headers:
        assert not name_.startswith("access-control-"), headers  # no CORS grant anywhere
    # Whatever was tried, the stored message is still there for its user agent.
    service = target.running.service
    assert service is not None and target.agent.uaid is not None
    assert len(await service.pending(target.agent.uaid)) == 1


def test_the_documented_table_matches_the_corpus() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([a-z0-9-]+)` \|.*\| (\d{3}) \| (\d+|-) \|$", line)
        if match:
            rows[match[1]] = (int(match[2]), None if match[3] == "-" else int(match[3]))
    expected = {name: (status, errno) for name, _, status, errno in CORPUS}
    assert rows == expected
