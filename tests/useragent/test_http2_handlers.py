"""Handler semantics over RFC 8030: the DELETE (the ack) follows the event."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from support.service import RunningService
from tidings.useragent import PushEvent
from tidings.webpush import encrypt, public_key_bytes

from .helpers import Inbox, send_raw
from .test_http2_end_to_end import h2_agent, service_uaid


async def pending(service: RunningService, uaid: str) -> int:
    assert service.service is not None
    return len(await service.service.pending(uaid))


async def wait_pending(service: RunningService, uaid: str, count: int) -> None:
    async with asyncio.timeout(5):
        while await pending(service, uaid) != count:
            await asyncio.sleep(0.02)


async def test_wait_until_delays_the_delete(service: RunningService, tmp_path: Path) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    finished: list[str] = []

    async def work(event: PushEvent) -> None:
        await gate.wait()
        finished.append(event.message_id)

    def on_push(event: PushEvent) -> None:
        event.wait_until(work(event))
        started.set()

    async with h2_agent(service, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=on_push)
        info = (await registration.push_manager.subscribe()).to_json()
        uaid = service_uaid(service, ua)
        await send_raw(info, b"slow")
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.2)
        assert await pending(service, uaid) == 1  # handler returned, work still running
        gate.set()
        await wait_pending(service, uaid, 0)
        assert len(finished) == 1


async def test_a_raising_handler_is_acknowledged_and_the_agent_goes_on(
    service: RunningService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()

    def on_push(event: PushEvent) -> None:
        inbox(event)
        if event.data is not None and event.data.text() == "bad":
            raise RuntimeError("handler bug")

    async with h2_agent(service, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=on_push)
        info = (await registration.push_manager.subscribe()).to_json()
        await send_raw(info, b"bad")
        await send_raw(info, b"good")
        await inbox.wait_for(2)
        await wait_pending(service, service_uaid(service, ua), 0)
        assert inbox.texts == ["bad", "good"] and ua.connected
    assert "handler bug" in caplog.text


async def test_an_undecryptable_body_is_deleted_and_never_delivered(
    service: RunningService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    caplog.set_level(logging.WARNING, logger="tidings.useragent")
    stranger = public_key_bytes(ec.generate_private_key(ec.SECP256R1()))
    state = tmp_path / "ua"
    async with h2_agent(service, state) as ua:
        registration = await ua.register("app", on_push=inbox)
        info = (await registration.push_manager.subscribe()).to_json()
        wrong = encrypt(b"for someone else", stranger, b"S" * 16)
        assert (await send_raw(info, b"", body=wrong)).status_code == 201
        await send_raw(info, b"fine")
        await inbox.wait_for(1)
        uaid = service_uaid(service, ua)
        await wait_pending(service, uaid, 0)  # deleted too: not pushed again forever
        await asyncio.sleep(0.1)
        assert inbox.texts == ["fine"]
    assert "does not decrypt" in caplog.text
    async with h2_agent(service, state) as ua:  # a new connection: nothing comes again
        await ua.register("app", on_push=inbox)
        await ua.wait_connected(5)
        await asyncio.sleep(0.2)
        assert inbox.texts == ["fine"]
