"""Running one service node until SIGTERM or SIGINT, then draining."""

from __future__ import annotations

import asyncio
import logging
import signal

from tidings.service.config import ServiceConfig
from tidings.service.core import PushService
from tidings.service.http.server import TidingsServer, tls_context
from tidings.service.keyfile import KeyFileError

log = logging.getLogger("tidings.service")


def build_server(config: ServiceConfig, service: PushService | None = None) -> TidingsServer:
    """The listener for `config` (not started)."""
    ssl_context = None
    if config.tls_cert and config.tls_key:
        ssl_context = tls_context(config.tls_cert, config.tls_key)
    return TidingsServer(
        service or PushService(config),
        host=config.host,
        port=config.port,
        ssl_context=ssl_context,
        reuse_port=config.reuse_port,
    )


async def run(config: ServiceConfig) -> None:
    """Serve until a termination signal, then drain and stop."""
    server = build_server(config)
    await server.start()
    log.info("serving on %s", config.origin)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("draining: closing connections")
    finally:
        await server.stop()
    log.info("stopped")


def serve(config: ServiceConfig) -> None:
    """Run the push service (with uvloop when it is installed)."""
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run(config))
    except (KeyFileError, OSError) as exc:
        # Start-up refused (key file, port in use...): say why and exit 1, no traceback.
        raise SystemExit(f"tidings serve: {exc}") from None
