"""The seam between the connection servers and the application they serve.

`service/http` parses HTTP/1.1, HTTP/2 and WebSocket frames and knows nothing of push
messages: whatever it serves is an `HttpApp`, the few calls the servers make. The push
service is one (`tidings.service.push_app.PushApp`); a test serves a fake one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tidings.service.http.messages import Request, Response

__all__ = ["HttpApp", "ServerSettings", "TextChannel", "WebSocketHandler"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The servers' timeouts and sizes, in seconds and bytes."""

    request_timeout: float = 30.0
    """To send a whole request: slow clients are cut off."""
    keepalive_timeout: float = 75.0
    """An idle connection is closed after this."""
    tls_handshake_timeout: float = 10.0
    hello_timeout: float = 10.0
    """A new WebSocket's first message, or it is closed."""
    max_websocket_message: int = 64 * 1024
    """Protocol messages are small; a bigger one is abuse."""
    max_connections: int | None = None
    """Open client connections of this process; past it new ones are closed at once."""
    max_connections_per_address: int | None = None
    """Open connections of one address key; past it a new one is answered 429 and closed."""
    max_tls_handshakes_per_address: int | None = None
    """TLS handshakes in progress of one address key; past it a new one is closed at once."""
    connection_key: Callable[[str], str | None] | None = None
    """The key a peer address counts under (None: skipped); default the address itself."""


class TextChannel(Protocol):
    """A WebSocket as the application writes to it."""

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class WebSocketHandler(Protocol):
    """The application's side of one WebSocket: it reads the text messages, in order."""

    @property
    def peer(self) -> str:
        """Who the client is, for logs."""
        ...

    @property
    def greeted(self) -> bool:
        """Whether the client has said who it is (until then, `hello_timeout` runs)."""
        ...

    def handle_now(self, text: str) -> bool:
        """Handle `text` at once if it can be (no waiting); False: queue it for `on_text`."""
        ...

    async def on_text(self, text: str) -> None:
        """Handle one message; raise `websocket_frames.FrameError` to close with its code."""
        ...

    def on_disconnect(self) -> None:
        """The connection is gone (after every message that arrived was handled)."""
        ...


class HttpApp(Protocol):
    """What the servers in `service/http` call on the application."""

    @property
    def settings(self) -> ServerSettings: ...

    @property
    def draining(self) -> bool:
        """Shutting down: finish what is open, take nothing new (503 to WebSockets)."""
        ...

    def body_limit(self, method: str, path: str) -> int:
        """The largest body accepted for this request (checked before reading it all)."""
        ...

    def client_of(self, request: Request) -> str:
        """The real client of a request: its peer, or whom trusted proxies forwarded."""
        ...

    async def handle(self, request: Request) -> Response:
        """Answer one request; never raises."""
        ...

    def too_large(self, request: Request) -> Response:
        """The answer to a request whose body was over `body_limit` (not read in full)."""
        ...

    def plain_error(self, status: int, message: str) -> Response:
        """The answer to a request that could not even be parsed (400, 408, 413, 431...)."""
        ...

    async def admit_websocket(self, request: Request) -> Response | None:
        """The address check before a WebSocket upgrade: None admits, a response refuses."""
        ...

    def open_websocket(self, channel: TextChannel, client: str) -> WebSocketHandler:
        """The handler of a WebSocket just opened by `client`."""
        ...

    def redact_path(self, path: str) -> str:
        """A path fit for the access log (capability tokens cut)."""
        ...

    async def start(self) -> None: ...

    async def drain(self) -> None:
        """Stop taking work; the servers then close idle connections."""
        ...

    async def stop(self) -> None: ...
