"""`tidings serve` as a real process: restarts, crashes, the token key file, draining."""

from __future__ import annotations

import asyncio
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.service import Registration, ServiceProcess, TestAgent
from tidings.webpush import encrypt


def encrypted(registration: Registration, text: str) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def push(registration: Registration, text: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            registration.endpoint,
            content=encrypted(registration, text),
            headers={"ttl": "600", "content-encoding": "aes128gcm"},
        )


async def connect(process: ServiceProcess, previous: TestAgent | None = None) -> TestAgent:
    agent = TestAgent(process.ws_url)
    await agent.connect(previous.uaid if previous else None)
    if previous is not None:
        assert agent.uaid == previous.uaid
        agent.registrations = dict(previous.registrations)
    return agent


async def received(agent: TestAgent) -> list[bytes | None]:
    texts: list[bytes | None] = []
    while True:
        try:
            notification = await agent.next_notification(timeout=0.5)
        except TimeoutError:
            return texts
        texts.append(notification.plaintext)


@pytest.fixture
def process(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(tmp_path / "data")
    yield process
    process.stop(signal.SIGKILL)


async def store_three_while_away(process: ServiceProcess) -> tuple[TestAgent, Registration]:
    agent = await connect(process)
    registration = await agent.register()
    await agent.close()
    for text in ("one", "two", "three"):
        assert (await push(registration, text)).status_code == 201
    return agent, registration


async def test_messages_survive_sigterm_restart(process: ServiceProcess) -> None:
    await asyncio.to_thread(process.start)
    key_file = process.data_dir / "tidings-secrets.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = key_file.read_bytes()
    agent, registration = await store_three_while_away(process)
    assert await asyncio.to_thread(process.stop, signal.SIGTERM) == 0
    await asyncio.to_thread(process.start)
    assert key_file.read_bytes() == keys  # reused, not replaced
    again = await connect(process, agent)
    assert await received(again) == [b"one", b"two", b"three"]
    # The endpoint handed out before the restart still works.
    assert (await push(registration, "after restart")).status_code == 201
    assert (await again.next_notification()).plaintext == b"after restart"
    await again.close()
    last = await connect(process, agent)
    await last.no_frame(0.5)  # delivered once
    await last.close()


async def test_messages_survive_sigkill(process: ServiceProcess) -> None:
    await asyncio.to_thread(process.start)
    agent, _ = await store_three_while_away(process)
    await asyncio.to_thread(process.kill)
    await asyncio.to_thread(process.start)
    again = await connect(process, agent)
    assert await received(again) == [b"one", b"two", b"three"]
    await again.close()
    last = await connect(process, agent)
    await last.no_frame(0.5)
    await last.close()


async def test_sigterm_closes_websockets_with_1001(process: ServiceProcess) -> None:
    await asyncio.to_thread(process.start)
    agents = [await connect(process) for _ in range(3)]
    await agents[0].register()
    assert await asyncio.to_thread(process.stop, signal.SIGTERM) == 0
    for agent in agents:
        await asyncio.wait_for(agent.closed.wait(), 5)
        assert agent.close_code == 1001


async def test_missing_key_file_with_existing_database_refuses_to_start(
    process: ServiceProcess,
) -> None:
    await asyncio.to_thread(process.start)
    await store_three_while_away(process)
    assert await asyncio.to_thread(process.stop, signal.SIGTERM) == 0
    key_file = process.data_dir / "tidings-secrets.json"
    key_file.unlink()
    with pytest.raises(RuntimeError, match="exited early"):
        await asyncio.to_thread(process.start)
    assert process.process is not None
    assert process.process.returncode not in (0, None)
    tail = process.log_tail()
    assert "key file" in tail
    assert "Traceback" not in tail  # a message for the operator, not a crash
    assert str(key_file) in tail
    assert not key_file.exists()  # no new key was made behind the operator's back
