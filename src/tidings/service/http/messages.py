"""Requests and responses as the service's handlers see them, whatever the protocol."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol


class ErrorAnswer(Protocol):
    """A refusal the application renders itself (the service's `ServiceError` is one)."""

    status: int
    headers: dict[str, str]

    def body(self) -> bytes:
        """The JSON error document."""
        ...


class ServerPushChannel(Protocol):
    """HTTP/2 server push on one open request stream (RFC 8030 monitoring)."""

    @property
    def closed(self) -> asyncio.Event:
        """Set when the client resets the stream or the connection ends."""
        ...

    @property
    def enabled(self) -> bool:
        """False when the client disabled server push (SETTINGS_ENABLE_PUSH 0)."""
        ...

    def push(self, path: str, response: Response, request_headers: dict[str, str]) -> bool:
        """Promise `GET path` and send `response` on the promised stream; False if closed."""
        ...

    async def received(self, timeout: float) -> bool:
        """Whether the client has read everything pushed so far (HTTP/2 PING answered
        after it) within `timeout` seconds; False if not, or if the connection ended."""
        ...


@dataclass(slots=True)
class Request:
    """One HTTP request: lowercase header names, repeated headers joined with ', '."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str = "-"
    http_version: str = "1.1"
    push_channel: ServerPushChannel | None = None  # HTTP/2 only
    request_id: str | None = None  # set when the request is answered (logs.request_id)
    message_id: str | None = None  # the push message this request created, if any
    trace_id: str | None = None  # its trace, when tracing is on


@dataclass(slots=True)
class Response:
    """One HTTP response. `headers` names are lowercase."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, status: int, document: object, headers: dict[str, str] | None = None) -> Response:
        """A JSON response."""
        body = json.dumps(document, separators=(",", ":")).encode()
        return cls(status, {"content-type": "application/json", **(headers or {})}, body)

    @classmethod
    def error(cls, error: ErrorAnswer) -> Response:
        """The JSON error document of a refused request."""
        return cls(
            error.status, {"content-type": "application/json", **error.headers}, error.body()
        )


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <phrase>` with CRLF (made once per status: every answer has one)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line
