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

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


async def health(url: str) -> httpx.Response | None:
    async with httpx.AsyncClient(timeout=2) as client:
        with contextlib.suppress(httpx.HTTPError):
            return await client.get(url + "/health")
    return None


async def test_serve_starts_without_its_postgresql_and_becomes_ready_once_it_answers(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "tidings-secrets.json"
    subprocess.run(
        [sys.executable, "-m", "tidings", "keys", "token", "--out", str(secrets)],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    proxy = CuttableProxy(PG_HOST, PG_PORT)  # not started: nothing listens there yet
    store_port = proxy.port
    async with postgres_database() as real_url:
        database = real_url.rsplit("/", 1)[1]
        url = f"postgresql://{PG_USER}@127.0.0.1:{store_port}/{database}"
        node = ServiceProcess(tmp_path / "node", args=["--store", url, "--secrets", str(secrets)])
        node.data_dir.mkdir(parents=True)
        log = node.log_path.open("ab")
        command = [sys.executable, "-m", "tidings", "serve", "--port", str(node.port)]
        node.process = subprocess.Popen([*command, *node.args], stdout=log, stderr=log, cwd=REPO)
        try:
            deadline = time.monotonic() + 30
            while (answer := await health(node.url)) is None:
                assert node.process.poll() is None, f"serve exited:\n{node.log_tail()}"
                assert time.monotonic() < deadline, node.log_tail()
                await asyncio.sleep(0.1)
            assert answer.status_code == 503
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
            log.close()
            proxy.close()
