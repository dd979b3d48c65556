"""A full disk or a read-only database: 503 with Retry-After, never a 201; nothing lost.

The full disk is real: the database lives on a small tmpfs that the test fills (needs
root to mount, as in CI; skipped otherwise). The read-only database is SQLite's own
read-only mode switched on under the running service (`PRAGMA query_only`), which fails
writes with SQLITE_READONLY, the error a read-only file gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import Registration, ServiceProcess, TestAgent, running_service
from tidings.webpush import encrypt

CONFIG = (
    "max_messages_per_user_agent = 100000\nmax_messages_per_subscription = 100000\n"
    'max_bytes_per_user_agent = 1099511627776\nrate_push_subscription = "off"\n'
)


def encrypted(registration: Registration, text: str) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def push(client: httpx.AsyncClient, registration: Registration, text: str) -> httpx.Response:
    return await client.post(
        registration.endpoint,
        content=encrypted(registration, text),
        headers={"ttl": "600", "content-encoding": "aes128gcm"},
    )


async def collect(agent: TestAgent) -> set[str]:
    texts: set[str] = set()
    while True:
        try:
            notification = await agent.next_notification(timeout=1)
        except TimeoutError:
            return texts
        texts.add((notification.plaintext or b"").decode())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that can really be filled."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Write `path` until the disk is full."""
    chunk = b"\0" * 65536
    with path.open("wb") as out:
        while True:
            try:
                out.write(chunk)
                out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):  # the last bytes in the buffer
            out.close()


async def test_full_disk_answers_503_never_201_then_recovers(
    tmp_path: Path, small_disk: Path
) -> None:
    config = tmp_path / "service.toml"
    config.write_text(CONFIG)
    process = ServiceProcess(
        tmp_path / "logs", args=["--db", str(small_disk / "tidings.db"), "--config", str(config)]
    )
    await asyncio.to_thread(process.start)
    try:
        agent = TestAgent(process.ws_url)
        await agent.connect()
        registration = await agent.register()
        await agent.close()
        accepted: set[str] = set()
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await push(client, registration, "before")).status_code == 201
            accepted.add("before")
            await asyncio.to_thread(fill, small_disk / "filler")
            refused = 0
            for number in range(60):
                text = f"full {number}" + "x" * 2000  # big enough to need new pages
                response = await push(client, registration, text)
                assert response.status_code in (201, 503), response.text
                if response.status_code == 201:
                    accepted.add(text)  # the WAL still had room: really stored
                else:
                    refused += 1
                    assert response.headers["retry-after"].isdigit()
                    assert response.json()["errno"] == 503
            assert refused > 0, "the disk is full, yet every push was accepted"
            (small_disk / "filler").unlink()
            for attempt in range(50):  # the store comes back by itself
                response = await push(client, registration, f"after {attempt}")
                if response.status_code == 201:
                    accepted.add(f"after {attempt}")
                    break
                assert response.status_code == 503
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the service did not recover once space was freed")
        again = TestAgent(process.ws_url)
        await again.connect(agent.uaid)
        again.registrations = agent.registrations
        assert await collect(again) == accepted
        await again.close()
    finally:
        await asyncio.to_thread(process.stop)


async def _query_only(store: Any, on: bool) -> None:
    """Make both of the SQLite store's connections (its worker's and the event loop's)
    refuse writes, as a read-only file would."""
    pragma = f"PRAGMA query_only = {'ON' if on else 'OFF'}"
    await store._run(lambda db: db.execute(pragma))
    if store._inline is not None:
        store._inline.execute(pragma)


async def test_read_only_database_answers_503_never_201(tmp_path: Path) -> None:
    async with running_service(tmp_path, rate_push_subscription="off") as running:
        assert running.service is not None
        store = running.service.store
        agent = await running.agent()
        registration = await agent.register()
        await agent.close()
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await push(client, registration, "before")).status_code == 201
            await _query_only(store, True)
            for number in range(5):
                response = await push(client, registration, f"read-only {number}")
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"].isdigit()
                assert response.json()["errno"] == 503
            await _query_only(store, False)
            assert (await push(client, registration, "after")).status_code == 201
        again = await running.agent(agent.uaid)
        again.registrations = agent.registrations
        assert await collect(again) == {"before", "after"}
        await again.close()
