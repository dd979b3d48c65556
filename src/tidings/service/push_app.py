"""The push service as the servers in `service/http` see it: an `HttpApp`.

The servers parse HTTP and WebSocket frames; this adapter answers with `Routes`, admits
WebSockets by the per-address connection limit and gives each a `WebSocketSession`.
"""

from __future__ import annotations

from tidings.service.core import PushService, not_ready
from tidings.service.errors import ServiceError
from tidings.service.http.app import ServerSettings, TextChannel
from tidings.service.http.messages import Request, Response
from tidings.service.limits import Limit
from tidings.service.routes import Routes, redact_path
from tidings.service.ws_session import WebSocketSession

__all__ = ["PushApp"]


class PushApp:
    """One `PushService` served over HTTP/1.1, HTTP/2 and WebSocket (an `HttpApp`)."""

    def __init__(self, service: PushService) -> None:
        self.service = service
        self.routes = Routes(service)
        config = service.config
        self.settings = ServerSettings(
            request_timeout=config.request_timeout,
            keepalive_timeout=config.keepalive_timeout,
            tls_handshake_timeout=config.tls_handshake_timeout,
            hello_timeout=config.hello_timeout,
        )
        # The routes' own calls, without a hop through this object.
        self.body_limit = self.routes.body_limit
        self.client_of = self.routes.client_of
        self.handle = self.routes.handle
        self.too_large = self.routes.too_large
        self.plain_error = self.routes.plain_error

    @property
    def draining(self) -> bool:
        return self.service.draining

    async def admit_websocket(self, request: Request) -> Response | None:
        """New connections are rate limited per address; the limiter may be remote (Redis)."""
        if not self.service.ready:
            return Response.error(not_ready())
        try:
            await self.service.check_address_rate(Limit.CONNECT_ADDRESS, request.client)
        except ServiceError as error:
            return Response.error(error)
        return None

    def open_websocket(self, channel: TextChannel, client: str) -> WebSocketSession:
        return WebSocketSession(self.service, channel, client)

    @staticmethod
    def redact_path(path: str) -> str:
        return redact_path(path)

    async def start(self) -> None:
        await self.service.start()

    async def drain(self) -> None:
        await self.service.drain()

    async def stop(self) -> None:
        await self.service.stop()
