"""The npm web-push-testing push service, run for a test (private helper until a shared one lands).

It decrypts what it receives (aes128gcm and aesgcm, checking VAPID for restricted
subscriptions), so a test can read the plaintext back from /get-notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.ci import require

SCRIPT = Path(__file__).resolve().parents[1] / "node" / "wpt-server.js"


@dataclass
class WebPushTesting:
    url: str
    client: httpx.AsyncClient

    async def subscribe(self, application_server_key: str | None = None) -> dict[str, Any]:
        options: dict[str, Any] = {"userVisibleOnly": "true"}
        if application_server_key:
            options["applicationServerKey"] = application_server_key
        answer = await self.client.post(self.url + "subscribe", json=options)
        answer.raise_for_status()
        return dict(answer.json()["data"])

    async def messages(self, client_hash: str) -> list[str]:
        answer = await self.client.post(
            self.url + "get-notifications", json={"clientHash": client_hash}
        )
        answer.raise_for_status()
        return list(answer.json()["data"]["messages"])

    async def expire(self, client_hash: str) -> None:
        (await self.client.post(self.url + f"expire-subscription/{client_hash}")).raise_for_status()


@contextlib.asynccontextmanager
async def web_push_testing() -> AsyncIterator[WebPushTesting]:
    node = shutil.which("node")
    require(node is not None and SCRIPT.exists(), "node and tests/node/wpt-server.js")
    assert node is not None
    process = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        ready = json.loads(line)
        async with httpx.AsyncClient(timeout=10) as client:
            yield WebPushTesting(ready["url"], client)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()
