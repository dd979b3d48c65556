"""`tidings.http2.H2Client` against a real service."""

from __future__ import annotations

from support.service import RunningService
from tidings.http2 import H2Client


async def test_h2_client_ping(service: RunningService) -> None:
    async with await H2Client.connect(service.url) as client:
        assert 0 <= await client.ping(5) < 5
