"""`tidings serve --workers 2`: the per-address bounds hold for the node, not per worker.

The kernel spreads one address's connections over both workers (SO_REUSEPORT), so
before the shared table each worker let an address hold its own cap: up to twice it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from store.engines import delete_prefix, redis_url, require_redis
from support.service import ServiceProcess

CAP = 4
HOSTILE = "127.0.0.2"
OTHER = "127.0.0.3"


@contextlib.contextmanager
def workers_node(tmp_path: Path, **settings: str) -> Iterator[ServiceProcess]:
    require_redis()
    url = redis_url()
    config = tmp_path / "serve.toml"
    lines = [f'{name} = "{value}"' for name, value in settings.items()]
    config.write_text("\n".join(lines) + "\n")
    node = ServiceProcess(
        tmp_path / "node", args=["--workers", "2", "--cluster", url, "--config", str(config)]
    )
    node.start()
    try:
        wait_for_both_workers(node)
        yield node
    finally:
        node.stop(signal.SIGTERM)
        asyncio.run(delete_prefix(url))


def request(
    node: ServiceProcess, source: str, path: str = "/health"
) -> tuple[int, dict[str, object], http.client.HTTPConnection]:
    """One GET on a new connection from `source`, kept open: status, JSON body, connection."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", node.port, timeout=20, source_address=(source, 0)
    )
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    return response.status, json.loads(body) if body else {}, connection


def wait_for_both_workers(node: ServiceProcess, timeout: float = 60) -> None:
    """Until both workers answer: `start` returns once one does, and a loaded machine
    may start the other later, so that every connection went to the first."""
    seen: set[object] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"only {seen} answered"
        _, body, sock = request(node, "127.0.0.1")  # exempt: no limit is charged
        seen.add(body.get("node"))
        sock.close()


def open_many(
    node: ServiceProcess, source: str, count: int
) -> tuple[list[int], list[object], list[http.client.HTTPConnection]]:
    statuses, nodes, socks = [], [], []
    for _ in range(count):
        status, body, sock = request(node, source)
        statuses.append(status)
        nodes.append(body.get("node"))
        socks.append(sock)
    return statuses, nodes, socks


def close_all(socks: list[http.client.HTTPConnection]) -> None:
    for sock in socks:
        sock.close()


def worker_pids(node: ServiceProcess) -> list[int]:
    assert node.process is not None
    pid = node.process.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_an_address_gets_its_connection_cap_once_per_node(tmp_path: Path) -> None:
    with workers_node(
        tmp_path, max_connections_per_address=str(CAP), rate_limit_exempt="127.0.0.1/32"
    ) as node:
        statuses, _, socks = open_many(node, HOSTILE, 3 * CAP)
        try:
            # Twelve connections land on both workers, yet only CAP are served node-wide.
            assert statuses.count(200) == CAP, statuses
            assert set(statuses) == {200, 429}, statuses
            status, _, other = request(node, OTHER)  # another address still gets in
            assert status == 200
            other.close()
        finally:
            close_all(socks)


def test_counts_recover_after_a_worker_is_killed(tmp_path: Path) -> None:
    with workers_node(
        tmp_path, max_connections_per_address=str(CAP), rate_limit_exempt="127.0.0.1/32"
    ) as node:
        # Hold the cap with at least one connection on each worker, when the hash allows.
        statuses, nodes, socks = open_many(node, HOSTILE, CAP)
        assert statuses == [200] * CAP
        victim_node = nodes[0]
        pids = worker_pids(node)
        assert len(pids) == 2
        victim = pids[0] if str(victim_node).endswith("-w0") else pids[1]
        os.kill(victim, signal.SIGKILL)  # no clean-up in the worker: its counts stay unless reset
        close_all(socks)
        # The survivor gives back its own on connection_lost, the parent zeroes the dead
        # worker's column: the address gets its whole cap again (polled, bounded).
        deadline = time.monotonic() + 30
        while True:
            statuses: list[int] = []
            with contextlib.suppress(OSError):  # the dead worker's queued connections reset
                statuses, _, socks = open_many(node, HOSTILE, CAP + 1)
                close_all(socks)
            if statuses == [200] * CAP + [429]:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.2)


def test_an_address_rate_limit_is_counted_node_wide(tmp_path: Path) -> None:
    """--workers needs --cluster, so the buckets are in Redis, shared by the workers."""
    with workers_node(
        tmp_path, rate_push_address="3/min", rate_limit_exempt="127.0.0.1/32"
    ) as node:
        statuses = []
        seen = set()
        for _ in range(8):
            status, _, sock = request(node, HOSTILE, "/m/not-a-message")
            statuses.append(status)
            sock.close()
        for _ in range(10):  # from the exempt address: /health is rate limited too
            _, body, sock = request(node, "127.0.0.1")
            seen.add(body.get("node"))
            sock.close()
        assert statuses.count(429) == 5, statuses
        assert len(seen) == 2, seen  # both workers were answering
