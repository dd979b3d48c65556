"""`tidings serve --workers N`: processes sharing one port, reaching each other by the bus."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from store.engines import delete_prefix, redis_url, require_redis
from support.ci import free_port
from support.service import REPO, ServiceProcess
from tidings.webpush import encrypt


async def test_workers_share_the_port_and_deliver_across_processes(tmp_path: Path) -> None:
    require_redis()
    url = redis_url()
    node = ServiceProcess(tmp_path / "node", args=["--workers", "2", "--cluster", url])
    node.start()
    try:
        agents = [await _agent(node) for _ in range(8)]
        async with httpx.AsyncClient() as client:
            for index, (_, registration) in enumerate(agents):
                info = registration.subscription_info()
                body = encrypt(f"to {index}".encode(), info["keys"]["p256dh"], info["keys"]["auth"])
                response = await client.post(
                    registration.endpoint,
                    content=body,
                    headers={"ttl": "60", "content-encoding": "aes128gcm", "connection": "close"},
                )
                assert response.status_code == 201
        for index, (agent, _) in enumerate(agents):
            assert (await agent.next_notification(10)).plaintext == f"to {index}".encode()
            await agent.close()
        # Both processes answer on the one port (each new connection lands on either).
        nodes = set()
        for _ in range(40):
            async with httpx.AsyncClient() as client:
                nodes.add((await client.get(node.url + "/health")).json()["node"])
        assert len(nodes) == 2, nodes
    finally:
        assert node.stop(signal.SIGTERM) == 0
        await delete_prefix(url)


async def _agent(node: ServiceProcess) -> tuple[object, object]:
    from support.service import TestAgent

    agent = TestAgent(node.ws_url)
    await agent.connect()
    return agent, await agent.register()


def test_workers_need_a_cluster_bus(tmp_path: Path) -> None:
    node = ServiceProcess(tmp_path / "node", args=["--workers", "2"])
    try:
        node.start(timeout=5)
    except RuntimeError as exc:
        assert "--workers needs --cluster" in str(exc)
    else:
        node.stop()
        raise AssertionError("--workers without --cluster must refuse to start")


async def test_a_sigterm_during_start_up_stops_every_worker(tmp_path: Path) -> None:
    """No orphaned worker, whenever the signal comes (here: while they are starting)."""
    require_redis()
    url = redis_url()
    port = str(free_port())
    command = [sys.executable, "-m", "tidings", "serve", "--port", port, "--db",
               str(tmp_path / "t.db"), "--workers", "2", "--cluster", url]  # fmt: skip
    parent = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.8)  # the parent has forked; the workers are starting
        parent.send_signal(signal.SIGTERM)
        parent.wait(40)
        await asyncio.sleep(0.5)
        left = subprocess.run(
            ["pgrep", "-f", f"tidings serve --port {port} "], capture_output=True, text=True
        )
        assert left.stdout.strip() == "", f"workers left running: {left.stdout}"
    finally:
        if parent.poll() is None:
            parent.kill()
        subprocess.run(["pkill", "-9", "-f", f"tidings serve --port {port} "], check=False)
        await delete_prefix(url)
