"""/health and /openapi.json are answered to anyone: a flood of them is charged to the
client address (rate_push_address) like pushes, except from rate_limit_exempt addresses."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from support.service import running_service
from tidings.service.errors import Errno


@pytest.mark.parametrize("path", ["/health", "/openapi.json"])
async def test_a_flood_of_unauthenticated_reads_gets_429(tmp_path: Path, path: str) -> None:
    settings = {"rate_limit_exempt": "", "rate_push_address": "1/h burst 3"}
    async with running_service(tmp_path, **settings) as running:
        url = f"http://127.0.0.1:{running.config.port}{path}"
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = [(await client.get(url)).status_code for _ in range(3)]
            refused = await client.get(url)
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    document = refused.json()
    assert (document["code"], document["errno"]) == (429, Errno.RATE_LIMITED)


async def test_health_checks_from_an_exempt_address_are_not_counted(tmp_path: Path) -> None:
    # 127.0.0.0/8 is exempt by default: a load balancer there is never refused.
    async with running_service(tmp_path, rate_push_address="1/h burst 3") as running:
        url = f"http://127.0.0.1:{running.config.port}/health"
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = {(await client.get(url)).status_code for _ in range(10)}
    assert statuses == {200}
