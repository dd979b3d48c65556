"""Shutdown ends open RFC 8030 monitors instead of waiting out the grace period."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

from support.ci import free_port
from tidings.http2 import H2Client
from tidings.service.config import ServiceConfig
from tidings.service.run import build_server
from tidings.webpush.links import link_target


async def test_stop_closes_subscription_and_receipt_monitors(tmp_path: Path) -> None:
    config = ServiceConfig(port=free_port(), db=str(tmp_path / "t.db"), log_level="warning")
    server = build_server(config)
    await server.start()
    client = await H2Client.connect(config.origin)
    subscribed = await client.request("POST", "/subscribe")
    push_url = link_target(subscribed.headers["link"], "urn:ietf:params:push") or ""
    pushed = await client.request(
        "POST", urlsplit(push_url).path, {"ttl": "60", "prefer": "respond-async"}
    )
    receipts = link_target(pushed.headers["link"], "urn:ietf:params:push:receipt") or ""
    monitor = await client.open_stream("GET", urlsplit(subscribed.headers["location"]).path)
    receipt_monitor = await client.open_stream("GET", urlsplit(receipts).path)
    await monitor.next_push(5)
    started = time.monotonic()
    await server.stop(grace=10)
    assert time.monotonic() - started < 3  # not the whole grace period
    await asyncio.wait_for(client.closed.wait(), 5)
    # Both monitors ended with the connection: the user agent and the application
    # server learn at once that they must reconnect (to another node, in a cluster).
    for stream in (monitor, receipt_monitor):
        assert stream.response.done()
