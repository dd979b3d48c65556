"""Running the service: uvicorn around the ASGI app, with a drain on SIGTERM.

On SIGTERM or SIGINT the node stops accepting connections, closes every WebSocket with
1001 "going away" (browsers then reconnect, to another node if there is one), lets
in-flight requests finish, then closes the store.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from tidings.service.asgi import TidingsApp
from tidings.service.config import ServiceConfig
from tidings.service.core import PushService

log = logging.getLogger("tidings.service")

WEBSOCKET_MAX_FRAME = 64 * 1024  # protocol frames are small; a bigger one is abuse


class DrainingServer(uvicorn.Server):
    """uvicorn's server, closing WebSockets with 1001 before its own shutdown."""

    def __init__(self, config: uvicorn.Config, service: PushService) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting before closing the connections we hold
        await self.service.drain()
        await super().shutdown(sockets)


def uvicorn_config(app: TidingsApp, config: ServiceConfig) -> uvicorn.Config:
    """uvicorn settings for the push service."""
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop=loop,
        http="httptools",
        ws="websockets-sansio",
        # Push frames are small, encrypted and incompressible; zlib state would cost
        # tens of kilobytes per connection for nothing.
        ws_per_message_deflate=False,
        ws_max_size=WEBSOCKET_MAX_FRAME,
        lifespan="on",
        log_level=config.log_level,
        access_log=False,  # the app logs requests itself, with capability tokens redacted
        server_header=False,
        timeout_graceful_shutdown=10,
    )


def serve(config: ServiceConfig) -> None:
    """Run the push service until SIGTERM/SIGINT."""
    service = PushService(config)
    app = TidingsApp(service)
    server = DrainingServer(uvicorn_config(app, config), service)
    server.run()
