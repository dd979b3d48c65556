"""Several `tidings serve` processes sharing one PostgreSQL database and one Redis.

`cluster` gives each test a database of its own, a Redis key prefix of its own, one
token key file for all its nodes (`tidings keys token`), and a common public URL, as
behind a load balancer; every node it started is killed and the data dropped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from store.engines import (
    delete_prefix,
    postgres_database,
    redis_url,
    require_postgres,
    require_redis,
)
from support.service import (
    REPO,
    Registration,
    RunningService,
    ServiceProcess,
    TestAgent,
    running_service,
)
from tidings.webpush import encrypt

PUBLIC_URL = "http://push.tidings.test"


@dataclass
class Cluster:
    """The shared parts of a test cluster and a factory of its nodes."""

    root: Path
    store_url: str
    cluster_url: str
    secrets: Path
    nodes: list[ServiceProcess] = field(default_factory=list)

    def node(self, name: str, *extra: str, store_url: str | None = None) -> ServiceProcess:
        """A node (not started) of this cluster."""
        args = [
            "--store", store_url or self.store_url,
            "--cluster", self.cluster_url,
            "--secrets", str(self.secrets),
            "--public-url", PUBLIC_URL,
            "--node-id", name,
            "--log-level", "info",
            *extra,
        ]  # fmt: skip
        node = ServiceProcess(self.root / name, args=args)
        self.nodes.append(node)
        return node

    async def start(self, *names: str, extra: tuple[str, ...] = ()) -> list[ServiceProcess]:
        """Start nodes side by side (as a deployment would), each its own process."""
        nodes = [self.node(name, *extra) for name in names]
        await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes))
        return nodes


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    require_postgres()
    require_redis()
    secrets = tmp_path / "tidings-secrets.json"
    subprocess.run(
        [sys.executable, "-m", "tidings", "keys", "token", "--out", str(secrets)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    url = redis_url()
    async with postgres_database() as store_url:
        made = Cluster(tmp_path, store_url, url, secrets)
        try:
            yield made
        finally:
            await asyncio.gather(*(asyncio.to_thread(n.kill) for n in made.nodes))
            await delete_prefix(url)


def at(node: ServiceProcess, url: str) -> str:
    """The same resource, asked of one particular node (instead of the load balancer)."""
    return url.replace(PUBLIC_URL, node.url, 1)


async def push(
    node: ServiceProcess,
    registration: Registration,
    text: str,
    *,
    ttl: int = 600,
    client: httpx.AsyncClient | None = None,
    **headers: str,
) -> httpx.Response:
    """POST an encrypted push for `registration` to `node`."""
    keys = registration.subscription_info()["keys"]
    body = encrypt(text.encode(), keys["p256dh"], keys["auth"])
    all_headers = {"ttl": str(ttl), "content-encoding": "aes128gcm", **headers}
    if client is not None:
        return await client.post(at(node, registration.endpoint), content=body, headers=all_headers)
    async with httpx.AsyncClient(timeout=10) as own:
        return await own.post(at(node, registration.endpoint), content=body, headers=all_headers)


async def connect(node: ServiceProcess, previous: TestAgent | None = None) -> TestAgent:
    """A test user agent on `node`, continuing `previous` (same uaid, same keys)."""
    agent = TestAgent(node.ws_url)
    await agent.connect(previous.uaid if previous else None)
    if previous is not None:
        assert agent.uaid == previous.uaid
        agent.registrations = previous.registrations
    return agent


async def drain(agent: TestAgent, quiet: float = 0.5) -> list[tuple[str, bytes | None]]:
    """(message id, plaintext) of every notification until `quiet` seconds pass."""
    got: list[tuple[str, bytes | None]] = []
    while True:
        try:
            notification = await agent.next_notification(timeout=quiet)
        except TimeoutError:
            return got
        got.append((notification.version, notification.plaintext))


async def close_quietly(*agents: TestAgent) -> None:
    for agent in agents:
        with contextlib.suppress(Exception):
            await agent.close()


@contextlib.asynccontextmanager
async def in_process_nodes(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[RunningService, RunningService]]:
    """Two nodes in this event loop (objects inspectable) on one PostgreSQL and one Redis,
    both with `settings` (ServiceConfig's names)."""
    require_postgres()
    require_redis()
    secrets = tmp_path / "tidings-secrets.json"
    subprocess.run(
        [sys.executable, "-m", "tidings", "keys", "token", "--out", str(secrets)],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    bus = redis_url()
    try:
        async with postgres_database() as store:
            shared = {"store": store, "cluster": bus, "secrets": str(secrets), **settings}
            async with (
                running_service(tmp_path / "a", node_id="node-a", **shared) as a,
                running_service(tmp_path / "b", node_id="node-b", **shared) as b,
            ):
                yield a, b
    finally:
        await delete_prefix(bus)
