"""The service's own HTTP server over raw sockets and HTTP/2: errors are still JSON.

The push API must answer the same way whether a request comes over HTTP/1.1 (one at a
time, pipelined, chunked) or cleartext HTTP/2, and a request the server cannot even
parse still gets the JSON error body.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import Registration, RunningService, running_service
from tidings.service.errors import Errno
from tidings.service.http import websocket as ws
from tidings.webpush import encrypt


def encrypted(registration: Registration, text: str) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def exchange(service: RunningService, request: bytes, responses: int = 1) -> list[bytes]:
    """Send raw bytes; read `responses` HTTP/1.1 responses (each with content-length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.config.port)
    answers: list[bytes] = []
    try:
        writer.write(request)
        await writer.drain()
        for _ in range(responses):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            answers.append(head + body)
    finally:
        writer.close()
    return answers


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_json_error(answer: bytes, status: int) -> dict[str, object]:
    code, headers, body = parse(answer)
    assert code == status, answer
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert set(document) == {"code", "errno", "error", "message"}
    assert document["code"] == status
    return document


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.x\r\n\r\n",  # malformed; a well-formed HTTP/9.9 is a 505
        b"POST /push/x HTTP/1.1\r\nhost: a\r\ncontent-length: abc\r\n\r\n",
        b"GET /health HTTP/1.1\r\nbad header line\r\n\r\n",
    ],
    ids=["garbage", "version", "bad-length", "bad-header"],
)
async def test_malformed_request_is_400_json(service: RunningService, request_bytes: bytes) -> None:
    (answer,) = await exchange(service, request_bytes)
    assert assert_json_error(answer, 400)["errno"] == Errno.MALFORMED_REQUEST
    agent = await service.agent()  # the service keeps serving
    await agent.close()


async def test_oversized_headers_are_refused_with_json(service: RunningService) -> None:
    request = b"GET /health HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n"
    (answer,) = await exchange(service, request)
    document = assert_json_error(answer, 431)
    assert "too large" in str(document["message"])


async def test_overlong_request_line_is_refused_with_json(service: RunningService) -> None:
    (answer,) = await exchange(service, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
    document = assert_json_error(answer, 431)
    assert "too long" in str(document["message"])


async def test_pipelined_requests_are_answered_in_order(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    path = "/push/" + registration.endpoint.rsplit("/", 1)[1]
    body = encrypted(registration, "pipelined")
    push = (
        f"POST {path} HTTP/1.1\r\nhost: a\r\nttl: 60\r\ncontent-encoding: aes128gcm\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    bad = f"POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n".encode()
    health = b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"
    answers = await exchange(service, push + bad + health, responses=3)
    assert [parse(answer)[0] for answer in answers] == [201, 400, 200]
    assert (await agent.next_notification()).plaintext == b"pipelined"
    await agent.close()


async def test_keep_alive_connection_serves_many_pushes(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    async with httpx.AsyncClient(timeout=10) as client:
        for index in range(5):
            response = await client.post(
                registration.endpoint,
                content=encrypted(registration, f"n{index}"),
                headers={"ttl": "60", "content-encoding": "aes128gcm"},
            )
            assert response.status_code == 201
    texts = [(await agent.next_notification()).plaintext for _ in range(5)]
    assert texts == [f"n{index}".encode() for index in range(5)]
    await agent.close()


async def test_head_health_has_no_body(service: RunningService) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.head(service.url + "/health")
    assert response.status_code == 200
    assert response.content == b""


# HTTP/2 (cleartext, prior knowledge) ----------------------------------------------------


async def test_push_over_http2(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    registration.endpoint,
                    content=encrypted(registration, f"h2 {index}"),
                    headers={"ttl": "60", "content-encoding": "aes128gcm"},
                )
                for index in range(5)
            )
        )
    for response in responses:
        assert response.http_version == "HTTP/2"
        assert response.status_code == 201, response.text
        assert response.headers["location"].startswith(service.url + "/m/")
        assert response.headers["ttl"] == "60"
    texts = sorted([(await agent.next_notification()).plaintext or b"" for _ in range(5)])
    assert texts == [f"h2 {index}".encode() for index in range(5)]
    await agent.close()


async def test_errors_over_http2_are_json(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
        missing_ttl = await client.post(
            registration.endpoint,
            content=encrypted(registration, "x"),
            headers={"content-encoding": "aes128gcm"},
        )
        too_big = await client.post(
            registration.endpoint,
            content=b"\x00" * (service.config.max_body + 1),
            headers={"ttl": "60", "content-encoding": "aes128gcm"},
        )
        unknown = await client.get(service.url + "/nothing")
        bad_token = await client.post(service.url + "/push/garbage", headers={"ttl": "1"})
    for response, status, errno in [
        (missing_ttl, 400, Errno.BAD_TTL),
        (too_big, 413, Errno.BODY_TOO_LARGE),
        (unknown, 404, Errno.NOT_FOUND),
        (bad_token, 404, Errno.INVALID_TOKEN),
    ]:
        assert response.http_version == "HTTP/2"
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["errno"] == errno
    await agent.close()


async def test_expect_100_continue_is_answered(service: RunningService) -> None:
    # curl, .NET and Java clients send `Expect: 100-continue` and then wait (curl: 1 s)
    # for the interim answer before sending the body.
    agent = await service.agent()
    registration = await agent.register()
    body = encrypted(registration, "expected")
    path = "/push/" + registration.endpoint.rsplit("/", 1)[1]
    head = (
        f"POST {path} HTTP/1.1\r\nhost: a\r\nttl: 60\r\ncontent-encoding: aes128gcm\r\n"
        f"expect: 100-continue\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", service.config.port)
    try:
        writer.write(head)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(body)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert final.startswith(b"HTTP/1.1 201 ")
    finally:
        writer.close()
    assert (await agent.next_notification()).plaintext == b"expected"
    await agent.close()


async def test_expect_100_continue_with_too_large_body_gets_413(
    service: RunningService,
) -> None:
    request = (
        b"POST /push/x HTTP/1.1\r\nhost: a\r\nttl: 60\r\nexpect: 100-continue\r\n"
        b"content-length: 100000\r\n\r\n"
    )
    (answer,) = await exchange(service, request)
    assert_json_error(answer, 413)


class _SlowSession:
    """A session whose handling of a frame never finishes (a busy store, say)."""

    greeted = False
    peer = "test"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    def handle_now(self, text: str) -> bool:
        return False  # every frame takes the queued path

    async def on_text(self, text: str) -> None:
        self.started.set()
        await asyncio.Event().wait()

    def on_disconnect(self) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.paused = False
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _masked(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


async def test_a_client_flooding_frames_is_paused_not_buffered(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        assert service.service is not None
        transport: Any = _Transport()
        session = _SlowSession()
        protocol = ws.WebSocketConnection(
            transport, lambda channel, client: session, "test", max_message=65536, hello_timeout=10
        )
        frames = b"".join(_masked(json.dumps({"n": i})) for i in range(ws.MAX_QUEUED_FRAMES + 5))
        protocol.data_received(frames)
        await session.started.wait()
        assert transport.paused
        protocol.connection_lost(None)


async def test_an_idle_http2_connection_is_closed(tmp_path: Path) -> None:
    """A connection that opens HTTP/2 and then asks nothing does not hold a socket forever."""
    from tidings.http2 import H2Client

    async with running_service(tmp_path, keepalive_timeout=0.3) as service:
        client = await H2Client.connect(service.url)
        assert (await client.request("GET", "/health")).status == 200
        await asyncio.wait_for(client.closed.wait(), 5)  # closed after 0.3 s of idleness


async def test_a_store_down_at_hello_closes_with_try_again_later(tmp_path: Path) -> None:
    """The session, not the connection, turns StoreUnavailable into close 1013."""
    import websockets

    from tidings.service.store import StoreUnavailable

    async with running_service(tmp_path) as service:
        assert service.service is not None

        async def store_down(uaid: str | None) -> str:
            raise StoreUnavailable("disk gone")

        service.service.resolve_uaid = store_down  # type: ignore[method-assign]
        async with websockets.connect(service.ws_url, open_timeout=5, compression=None) as client:
            await client.send(json.dumps({"messageType": "hello", "use_webpush": True}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
        assert closed.value.rcvd.reason == "service unavailable, try again later"
