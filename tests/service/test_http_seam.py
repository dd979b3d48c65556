"""The HTTP layer below the app: service/http serves any HttpApp, not only the push service.

A tiny echo app is served over HTTP/1.1, HTTP/2 and WebSocket by `HttpServer`; nothing
of the push service (core, routes, store) is started, or even imported.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from unittest.mock import Mock

import httptools
import httpx
import pytest
import websockets

from support.ci import free_port
from tidings.http2 import H2Client
from tidings.service.http.app import ServerSettings, TextChannel, WebSocketHandler
from tidings.service.http.messages import Request, Response
from tidings.service.http.server import HttpServer


class _Echo:
    """A WebSocket handler that answers every text with itself, upper-cased."""

    def __init__(self, channel: TextChannel, peer: str) -> None:
        self.channel = channel
        self.peer = peer
        self.greeted = False
        self.disconnected = asyncio.Event()

    def handle_now(self, text: str) -> bool:
        return False

    async def on_text(self, text: str) -> None:
        self.greeted = True
        await self.channel.send_text(text.upper())

    def on_disconnect(self) -> None:
        self.disconnected.set()


class EchoApp:
    """An HttpApp with no push service behind it: it says what it was asked."""

    settings = ServerSettings(request_timeout=5, keepalive_timeout=5)

    def __init__(self) -> None:
        self.draining = False
        self.refused_addresses: set[str] = set()
        self.handlers: list[_Echo] = []
        self.calls: list[str] = []

    def body_limit(self, method: str, path: str) -> int:
        return 1024

    def client_of(self, request: Request) -> str:
        return request.client

    async def handle(self, request: Request) -> Response:
        document = {"method": request.method, "path": request.path, "http": request.http_version}
        return Response.json(200, document | {"body": request.body.decode()})

    def too_large(self, request: Request) -> Response:
        return Response(413, {}, b"too large")

    def plain_error(self, status: int, message: str) -> Response:
        return Response(status, {}, message.encode())

    async def admit_websocket(self, request: Request) -> Response | None:
        host = request.client.rsplit(":", 1)[0]
        return Response(429, {}, b"not you") if host in self.refused_addresses else None

    def open_websocket(self, channel: TextChannel, client: str) -> WebSocketHandler:
        handler = _Echo(channel, client)
        self.handlers.append(handler)
        return handler

    def redact_path(self, path: str) -> str:
        return path

    async def start(self) -> None:
        self.calls.append("start")

    async def drain(self) -> None:
        self.draining = True
        self.calls.append("drain")

    async def stop(self) -> None:
        self.calls.append("stop")


@pytest.fixture
async def echo_server() -> AsyncIterator[HttpServer[EchoApp]]:
    server = HttpServer(EchoApp(), host="127.0.0.1", port=free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1)


def _origin(server: HttpServer[EchoApp]) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_http1_requests_reach_the_app(echo_server: HttpServer[EchoApp]) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(_origin(echo_server) + "/any/path", content=b"hi")
        too_big = await client.post(_origin(echo_server) + "/any/path", content=b"x" * 2000)
    assert answer.status_code == 200
    assert answer.json() == {"method": "POST", "path": "/any/path", "http": "1.1", "body": "hi"}
    # Refused from its Content-Length, before the body: the app words the answer.
    assert too_big.status_code == 413 and too_big.content == b"the body is over 1024 bytes"
    assert echo_server.app.calls == ["start"]


async def test_http1_reads_each_request_line_once_pipelined_too(
    echo_server: HttpServer[EchoApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    parse_url = Mock(wraps=httptools.parse_url)
    monkeypatch.setattr(httptools, "parse_url", parse_url)
    seen: list[tuple[str, str, str]] = []
    handle = echo_server.app.handle

    async def capture(request: Request) -> Response:
        seen.append((request.method, request.path, request.query))
        return await handle(request)

    monkeypatch.setattr(echo_server.app, "handle", capture)
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_server.port)
    writer.write(
        b"POST /a?x=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi"
        b"GET /b?y=2 HTTP/1.1\r\nhost: t\r\n\r\n"
    )
    answers = b""
    async with asyncio.timeout(5):
        while b'"path":"/b"' not in answers:
            answers += await reader.read(4096)
    writer.close()
    assert seen == [("POST", "/a", "x=1"), ("GET", "/b", "y=2")]
    # Once a request, not once more for its body limit.
    assert [call.args for call in parse_url.call_args_list] == [(b"/a?x=1",), (b"/b?y=2",)]


async def test_http2_requests_reach_the_app(echo_server: HttpServer[EchoApp]) -> None:
    client = await H2Client.connect(_origin(echo_server))
    try:
        answer = await client.request("GET", "/h2")
    finally:
        await client.close()
    assert answer.status == 200
    assert json.loads(answer.body) == {"method": "GET", "path": "/h2", "http": "2", "body": ""}


async def test_websockets_are_the_apps_handlers(echo_server: HttpServer[EchoApp]) -> None:
    url = f"ws://127.0.0.1:{echo_server.port}/"
    async with websockets.connect(url, open_timeout=5, compression=None) as socket:
        await socket.send("hello")
        assert await asyncio.wait_for(socket.recv(), 5) == "HELLO"
    (handler,) = echo_server.app.handlers
    await asyncio.wait_for(handler.disconnected.wait(), 5)
    assert handler.greeted


async def test_the_app_refuses_a_websocket_by_address(echo_server: HttpServer[EchoApp]) -> None:
    echo_server.app.refused_addresses.add("127.0.0.1")
    url = f"ws://127.0.0.1:{echo_server.port}/"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=5, compression=None)
    assert refused.value.response.status_code == 429
    assert echo_server.app.handlers == []


async def test_stopping_drains_the_app_then_stops_it() -> None:
    server = HttpServer(EchoApp(), host="127.0.0.1", port=free_port())
    await server.start()
    await server.stop(grace=1)
    assert server.app.calls == ["start", "drain", "stop"]


def test_the_http_layer_imports_nothing_of_the_push_service() -> None:
    code = (
        "import sys, tidings.service.http.server, tidings.service.http.app; "
        "print(sorted(m for m in sys.modules if m.startswith('tidings.service.') "
        "and not m.startswith('tidings.service.http')))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert imported.strip() == "[]"
