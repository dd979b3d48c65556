"""The push service as the servers in `service/http` see it: an `HttpApp`.

The servers parse HTTP and WebSocket frames; this adapter answers with `Routes`, admits
WebSockets by the per-address connection limit and gives each a `WebSocketSession`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from tidings.service.config import ServiceConfig
from tidings.service.core import PushService, not_ready
from tidings.service.errors import ServiceError
from tidings.service.forwarded import parse_ip, parse_proxies
from tidings.service.http.app import ServerSettings, TextChannel
from tidings.service.http.messages import Request, Response
from tidings.service.limits import EXEMPT_CACHE, Limit, address_key, parse_networks
from tidings.service.routes import Routes, redact_path
from tidings.service.ws_session import WebSocketSession

__all__ = ["PushApp", "connection_key"]


def connection_key(config: ServiceConfig) -> Callable[[str], str | None]:
    """What a peer address counts under for `max_connections_per_address`.

    The key is the TCP peer's (an IPv6 address's /64, like the rate limits), never a
    forwarded address: the count is taken before any request is read. So trusted proxies
    are skipped, as are the `rate_limit_exempt` networks: a proxy carries many clients
    and has its own limits.
    """
    exempt = parse_networks(config.rate_limit_exempt) + parse_proxies(config.trusted_proxies)

    @functools.lru_cache(maxsize=EXEMPT_CACHE)
    def key(address: str) -> str | None:
        ip = parse_ip(address)  # an IPv4-mapped IPv6 address as the IPv4 one
        if ip is None:
            return address
        if any(ip in network for network in exempt):
            return None
        return address_key(str(ip))

    return key


class PushApp:
    """One `PushService` served over HTTP/1.1, HTTP/2 and WebSocket (an `HttpApp`)."""

    def __init__(self, service: PushService) -> None:
        self.service = service
        self.routes = Routes(service)
        config = service.config
        max_connections, per_address = config.connection_caps()
        self.settings = ServerSettings(
            request_timeout=config.request_timeout,
            keepalive_timeout=config.keepalive_timeout,
            tls_handshake_timeout=config.tls_handshake_timeout,
            hello_timeout=config.hello_timeout,
            max_connections=max_connections,
            max_connections_per_address=per_address,
            max_tls_handshakes_per_address=config.tls_handshake_cap(),
            connection_key=connection_key(config),
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
