"""The push element's HTTP endpoint (ASGI, served by uvicorn) and its browser demo.

    POST /hyperty/messages      a reTHINK message as JSON; the answer is a reTHINK
                                response (200: `body.code` says the outcome), or 202
                                for a posted response that was routed on
    GET  /hyperty/inbox?address=A&address=B&timeout=25
                                long-poll: `{"messages": [...]}` for those addresses;
                                polling makes them "connected" (no push while it lasts)
    DELETE /hyperty/inbox?address=A&address=B
                                the runtime leaves (goes back to sleep): those addresses
                                are not connected any more, the next message is pushed

Both carry `Authorization: Bearer <credential>`, the runtime credential its first
registration returned (only that registration goes without): 401 without a valid one,
403 when it is not the sender's, 429 over a limit (with `Retry-After`).
    GET  /hyperty/status?address=hyperty://...
                                `{"status": "live" | "disconnected" | null}`
    GET  /hyperty/config        `{"domain", "element", "applicationServerKey", "ttl",
                                "iceServers"}` (iceServers: for the call page)
    GET  /hyperty/              the browser demo page; /hyperty/sw.js its service worker;
                                /hyperty/call.html the call page a clicked call opens
    GET  /health                `ok`

Errors that are not reTHINK answers (bad JSON, unknown path) use the project's JSON
error body `{"code", "errno", "error", "message"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from tidings.hyperty.element import PushElement
from tidings.hyperty.element_limits import Refused
from tidings.hyperty.message import Message, MessageError
from tidings.webpush.errors import error_body

__all__ = ["ElementApp", "ElementServer"]

log = logging.getLogger("tidings.hyperty.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_BODY = 64 * 1024
MAX_POLL = 60.0

#: Stable error numbers of this endpoint (the service's errno space starts at 100).
ERRNO_NOT_FOUND = 301
ERRNO_BAD_MESSAGE = 302
ERRNO_TOO_LARGE = 303
ERRNO_NOT_ROUTED = 304
ERRNO_METHOD = 305

_STATIC = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "page.js": ("page.js", "text/javascript; charset=utf-8"),
    "sw.js": ("sw.js", "text/javascript; charset=utf-8"),
    "call.html": ("call.html", "text/html; charset=utf-8"),
    "call.js": ("call.js", "text/javascript; charset=utf-8"),
}


def _static(name: str) -> bytes:
    return resources.files("tidings.hyperty").joinpath("web", name).read_bytes()


class ElementApp:
    """The ASGI application around one `PushElement`."""

    def __init__(
        self,
        element: PushElement,
        *,
        prefix: str = "/hyperty",
        ice_servers: list[dict[str, Any]] | None = None,
    ) -> None:
        self.element = element
        self.prefix = prefix.rstrip("/")
        # STUN/TURN for the browser's call page (`/config` `iceServers`), as
        # RTCPeerConnection takes them: [{urls, username, credential}].
        self.ice_servers = list(ice_servers or [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/health":
            await _respond(send, 200, b"ok", "text/plain")
            return
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            await _error(send, 404, ERRNO_NOT_FOUND, "not found", f"no resource at {path}")
            return
        name = path[len(self.prefix) :].lstrip("/")
        if name == "messages":
            if method != "POST":
                await _error(send, 405, ERRNO_METHOD, "method not allowed", "POST a message")
                return
            await self._messages(scope, receive, send)
        elif name == "inbox" and method in ("GET", "DELETE"):
            await self._inbox(scope, send, leave=method == "DELETE")
        elif name == "status" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode())
            address = (query.get("address") or [""])[0]
            await _json(send, 200, {"address": address, "status": self.element.status(address)})
        elif name == "config" and method == "GET":
            await _json(send, 200, self._config())
        elif name in _STATIC and method == "GET":
            file, content_type = _STATIC[name]
            headers = [(b"service-worker-allowed", self.prefix.encode() + b"/")]
            await _respond(send, 200, _static(file), content_type, headers)
        else:
            await _error(send, 404, ERRNO_NOT_FOUND, "not found", f"no resource at {path}")

    def _config(self) -> dict[str, Any]:
        element = self.element
        return {
            "domain": element.domain,
            "element": element.url,
            "applicationServerKey": element.application_server_key,
            "ttl": element.ttl,
            "messages": self.prefix + "/messages",
            "allocation": element.allocation,
            "iceServers": self.ice_servers,
        }

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            await _error(send, 413, ERRNO_TOO_LARGE, "too large", f"at most {MAX_BODY} bytes")
            return
        try:
            message = Message.from_json(body)
        except MessageError as exc:
            await _error(send, 400, ERRNO_BAD_MESSAGE, "bad message", str(exc))
            return
        try:
            admitted = await self.element.admit(
                message, credential=_bearer(scope), client=_client(scope)
            )
        except Refused as refused:
            await _refused(send, refused)
            return
        message = admitted.message
        if message.is_response:
            destination = await self.element.route_response(message)
            if destination is None:
                await _error(
                    send,
                    404,
                    ERRNO_NOT_ROUTED,
                    "not routed",
                    f"no pending request {message.id} from {message.target} and no hyperty "
                    "to deliver this response to",
                )
            else:
                await _json(send, 202, {"routed": destination})
            return
        answer = await self.element.handle(message, runtime=admitted.runtime)
        assert answer is not None
        await _json(send, 200, answer.to_dict())

    async def _inbox(self, scope: Scope, send: Send, *, leave: bool = False) -> None:
        """GET: the long-poll; DELETE (`leave`): the runtime disconnects."""
        query = parse_qs(scope.get("query_string", b"").decode())
        addresses = query.get("address", [])
        if not addresses:
            await _error(send, 400, ERRNO_BAD_MESSAGE, "no address", "give ?address=hyperty://...")
            return
        if leave:
            try:
                dropped = self.element.disconnect(_bearer(scope), addresses)
            except Refused as refused:
                await _refused(send, refused)
                return
            await _json(send, 200, {"disconnected": addresses, "dropped": dropped})
            return
        try:
            timeout = min(max(float(query.get("timeout", ["25"])[0]), 0.0), MAX_POLL)
        except ValueError:
            await _error(send, 400, ERRNO_BAD_MESSAGE, "bad timeout", "timeout is in seconds")
            return
        try:
            messages = await self.element.poll(_bearer(scope), addresses, timeout)
        except Refused as refused:
            await _refused(send, refused)
            return
        await _json(send, 200, {"messages": [m.to_dict() for m in messages]})


def _bearer(scope: Scope) -> str | None:
    """The credential of `Authorization: Bearer <credential>`, if given."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text: str = bytes(value).decode("latin-1")
            scheme, _, credential = text.partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


async def _refused(send: Send, refused: Refused) -> None:
    headers: list[tuple[bytes, bytes]] = []
    if refused.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="hyperty"'))
    if refused.retry_after is not None:
        from tidings.service.limits import retry_after

        headers.append((b"retry-after", retry_after(refused.retry_after).encode()))
    body = error_body(refused.status, refused.errno, refused.message, error=refused.error)
    await _respond(send, refused.status, body, "application/json", headers)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not event.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, document: Any) -> None:
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    await _respond(send, status, body, "application/json")


async def _error(send: Send, status: int, errno: int, error: str, message: str) -> None:
    body = error_body(status, errno, message, error=error)
    await _respond(send, status, body, "application/json")


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the owner of the loop decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class ElementServer:
    """Serve an `ElementApp` on host:port (port 0: a free one) in the running loop."""

    def __init__(self, app: ElementApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._socket = socket.create_server((host, port), reuse_port=False)
        # Accepted sockets inherit this; asyncio sets TCP_NODELAY itself only on sockets it
        # creates (proto IPPROTO_TCP), and without it a long-poll answer on a kept-alive
        # connection waited ~40 ms for a delayed ACK (Nagle: headers and body are 2 writes).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The HTTP origin, e.g. `http://127.0.0.1:8090`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.app.element.mailboxes.close()
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._socket.close()

    async def __aenter__(self) -> ElementServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
