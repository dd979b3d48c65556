"""The ASGI adapter: HTTP requests and WebSockets in, `PushService` calls out.

Routes:
  WebSocket  /                the Firefox push protocol (dom.push.serverURL)
  POST       /push/<token>    an application server pushes a message (RFC 8030 section 5)
  DELETE     /m/<token>       cancel an undelivered message (RFC 8030 section 5.3)
  GET        /health          liveness and store status
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tidings.service import ws_protocol as wp
from tidings.service.core import MESSAGE_PATH, PUSH_PATH, PushService
from tidings.service.errors import Errno, ServiceError
from tidings.service.ws_session import WebSocketSession

log = logging.getLogger("tidings.http")
access_log = logging.getLogger("tidings.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MAX_HEADER_VALUE = 8192


def request_headers(scope: Scope) -> dict[str, str]:
    """Lowercase header names; repeated headers joined with ', ' (RFC 9110 section 5.3)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if len(value) > _MAX_HEADER_VALUE:
            raise ServiceError(431, Errno.BAD_ENCODING, f"header {name} is too large")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def send_response(
    send: Send, status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> None:
    """Send a complete HTTP response."""
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    raw_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ServiceError) -> None:
    """Send the JSON error document for `error`."""
    headers = {"content-type": "application/json", **error.headers}
    await send_response(send, error.status, error.body(), headers)


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The request body, refusing (413) one over `limit` without reading it all."""
    declared = headers.get("content-length")
    too_large = ServiceError(413, Errno.BODY_TOO_LARGE, f"the body is over {limit} bytes")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def redact_path(path: str) -> str:
    """A path fit for logs: capability tokens are secrets, so only their start is kept."""
    for prefix in (PUSH_PATH, MESSAGE_PATH):
        if path.startswith(prefix) and len(path) > len(prefix) + 8:
            return path[: len(prefix) + 8] + "..."
    return path[:200]


class ASGIChannel:
    """The session's view of an ASGI WebSocket."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


class TidingsApp:
    """The push service as an ASGI application."""

    def __init__(self, service: PushService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # Lifespan -------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.start()
                except Exception as exc:
                    log.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.service.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # HTTP -----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0

        async def logged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._answer(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %.1fms',
                client[0],
                scope.get("method"),
                redact_path(scope.get("path", "")),
                status,
                (time.perf_counter() - started) * 1000,
            )

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._route(scope, receive, send)
        except ServiceError as error:
            await send_error(send, error)
        except ConnectionResetError:
            return
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await send_error(
                send, ServiceError(500, Errno.INTERNAL, "internal error; it has been logged")
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        if path.startswith(PUSH_PATH):
            if method != "POST":
                raise _method_not_allowed("POST")
            await self._push(scope, receive, send, path[len(PUSH_PATH) :])
        elif path.startswith(MESSAGE_PATH):
            if method != "DELETE":
                raise _method_not_allowed("DELETE")
            await self.service.cancel_message(path[len(MESSAGE_PATH) :])
            await send_response(send, 204)
        elif path == "/health":
            if method not in ("GET", "HEAD"):
                raise _method_not_allowed("GET, HEAD")
            status = await self.service.health()
            code = 200 if status["status"] == "ok" else 503
            await send_response(
                send, code, json.dumps(status).encode(), {"content-type": "application/json"}
            )
        else:
            raise ServiceError(404, Errno.NOT_FOUND, f"nothing at {path[:100]}")

    async def _push(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        headers = request_headers(scope)
        # Refuse a token that does not open before reading the body or touching the store.
        self.service.open_endpoint(token)
        body = await read_body(receive, headers, self.service.config.max_body)
        accepted = await self.service.accept_push(token, headers, body)
        await send_response(
            send, accepted.status, headers={"location": accepted.location, "ttl": str(accepted.ttl)}
        )

    # WebSocket ------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        if scope["path"] != "/" or self.service.draining:
            await send({"type": "websocket.close", "code": 1013 if self.service.draining else 1008})
            return
        await send({"type": "websocket.accept"})
        client = scope.get("client") or ("?", 0)
        session = WebSocketSession(self.service, ASGIChannel(send), f"{client[0]}:{client[1]}")
        try:
            await self._websocket_loop(session, receive)
        except wp.FrameError as exc:
            log.info("closing %s: %s", session.peer, exc.reason)
            with contextlib.suppress(Exception):
                await session.close(exc.code, exc.reason)
        finally:
            session.on_disconnect()

    async def _websocket_loop(self, session: WebSocketSession, receive: Receive) -> None:
        hello_deadline = self.service.config.hello_timeout
        while True:
            if session.uaid is None:
                try:
                    message = await asyncio.wait_for(receive(), hello_deadline)
                except TimeoutError:
                    raise wp.FrameError(
                        wp.CLOSE_POLICY_VIOLATION, "no hello within the time allowed"
                    ) from None
            else:
                message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                raise wp.FrameError(wp.CLOSE_UNSUPPORTED_DATA, "only text frames are accepted")
            await session.on_text(text)


def _method_not_allowed(allowed: str) -> ServiceError:
    return ServiceError(
        405, Errno.METHOD_NOT_ALLOWED, f"use {allowed} here", headers={"allow": allowed}
    )
