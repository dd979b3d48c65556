"""`tidings serve` started while its PostgreSQL cannot be reached (found by the fault
campaign, docs/reliability.md: a node restarted during an outage exited with status 1
and stayed down). It starts anyway, answers 503 with a JSON error and /health not
ready while it retries the store with backoff (each retry logged), and becomes ready
once the store answers: here a TCP proxy to the real PostgreSQL started on the node's
store port only after the node did."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from cluster.tcpproxy import CuttableProxy
from store.engines import PG_HOST, PG_PORT, PG_USER, postgres_database
from support.service import REPO, ServiceProcess
from tidings.service.config import ServiceConfig
from tidings.service.core import PushService

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


async def health(url: str) -> httpx.Response | None:
    async with httpx.AsyncClient(timeout=2) as client:
        with contextlib.suppress(httpx.HTTPError):
            return await client.get(url + "/health")
    return None


def token_keys(path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "tidings", "keys", "token", "--out", str(path)],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    return path


async def serve_unready(node: ServiceProcess) -> None:
    """Start `tidings serve` (its store unreachable) and wait for its first answer."""
    node.data_dir.mkdir(parents=True)
    log = node.log_path.open("ab")
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(node.port)]
    node.process = subprocess.Popen([*command, *node.args], stdout=log, stderr=log, cwd=REPO)
    log.close()  # the child has its own copy
    deadline = time.monotonic() + 30
    while await health(node.url) is None:
        assert node.process.poll() is None, f"serve exited:\n{node.log_tail()}"
        assert time.monotonic() < deadline, node.log_tail()
        await asyncio.sleep(0.1)


async def test_serve_starts_without_its_postgresql_and_becomes_ready_once_it_answers(
    tmp_path: Path,
) -> None:
    secrets = token_keys(tmp_path / "tidings-secrets.json")
    proxy = CuttableProxy(PG_HOST, PG_PORT)  # not started: nothing listens there yet
    store_port = proxy.port
    async with postgres_database() as real_url:
        database = real_url.rsplit("/", 1)[1]
        url = f"postgresql://{PG_USER}@127.0.0.1:{store_port}/{database}"
        node = ServiceProcess(tmp_path / "node", args=["--store", url, "--secrets", str(secrets)])
        try:
            await serve_unready(node)
            deadline = time.monotonic() + 30
            answer = await health(node.url)
            assert answer is not None and answer.status_code == 503
            assert answer.json()["ready"] is False and answer.json()["status"] == "starting"
            async with httpx.AsyncClient(timeout=5) as client:
                push = await client.post(node.url + "/push/abc", headers={"TTL": "60"})
            assert push.status_code == 503 and push.headers["retry-after"]
            assert push.json()["errno"] == 503 and "store" in push.json()["message"]
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(node.ws_url, open_timeout=5)
            assert refused.value.response.status_code == 503
            while node.log_tail(200).count("store still unavailable") < 2:
                assert time.monotonic() < deadline, node.log_tail()
                await asyncio.sleep(0.1)
            proxy.start()
            while (answer := await health(node.url)) is None or answer.status_code != 200:
                assert time.monotonic() < deadline + 30, node.log_tail()
                await asyncio.sleep(0.2)
            assert answer.json()["ready"] is True
            async with httpx.AsyncClient(timeout=5) as client:
                subscribed = await client.post(node.url + "/subscribe", json={})
            assert subscribed.status_code == 201, subscribed.text
            assert "store reachable after" in node.log_tail(200)
            assert node.stop() == 0
        finally:
            node.stop()
            proxy.close()


async def test_a_wrong_key_file_found_once_the_store_answers_stops_serve_with_status_1(
    tmp_path: Path,
) -> None:
    """As at start: endpoints sealed with one key file, the node given another."""
    first = token_keys(tmp_path / "first.json")
    other = token_keys(tmp_path / "other.json")
    proxy = CuttableProxy(PG_HOST, PG_PORT)
    async with postgres_database() as real_url:
        service = PushService(ServiceConfig(store=real_url, secrets=str(first)))
        await service.start()  # the database records the first file's key
        await service.stop()
        database = real_url.rsplit("/", 1)[1]
        url = f"postgresql://{PG_USER}@127.0.0.1:{proxy.port}/{database}"
        node = ServiceProcess(tmp_path / "node", args=["--store", url, "--secrets", str(other)])
        try:
            await serve_unready(node)
            proxy.start()
            assert node.process is not None
            deadline = time.monotonic() + 60
            while node.process.poll() is None:
                assert time.monotonic() < deadline, node.log_tail()
                await asyncio.sleep(0.1)
            assert node.process.returncode == 1
            assert "does not hold any key" in node.log_tail(200)
        finally:
            node.stop()
            proxy.close()
