"""Handler semantics against a real service: when acks go out, and with which code."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from support.service import RunningService
from tidings.useragent import PushEvent
from tidings.webpush import encrypt, public_key_bytes

from .helpers import Inbox, make_agent, send_raw


async def pending(service: RunningService, uaid: str | None) -> int:
    assert service.service is not None and uaid is not None
    return len(await service.service.pending(uaid))


async def wait_pending(service: RunningService, uaid: str | None, count: int) -> None:
    async with asyncio.timeout(5):
        while await pending(service, uaid) != count:
            await asyncio.sleep(0.02)


async def test_wait_until_delays_the_ack(service: RunningService, tmp_path: Path) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    finished: list[str] = []

    async def work(event: PushEvent) -> None:
        await gate.wait()
        finished.append(event.message_id)

    def on_push(event: PushEvent) -> None:
        event.wait_until(work(event))
        started.set()

    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=on_push)
        info = (await registration.push_manager.subscribe()).to_json()
        await send_raw(info, b"slow")
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.2)
        assert await pending(service, ua.uaid) == 1  # handler returned, work still running
        gate.set()
        await wait_pending(service, ua.uaid, 0)
        assert len(finished) == 1


async def test_a_raising_handler_acks_102_and_the_agent_goes_on(
    service: RunningService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()

    def on_push(event: PushEvent) -> None:
        inbox(event)
        if event.data is not None and event.data.text() == "bad":
            raise RuntimeError("handler bug")

    caplog.set_level(logging.INFO, logger="tidings.service")
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=on_push)
        info = (await registration.push_manager.subscribe()).to_json()
        await send_raw(info, b"bad")
        await send_raw(info, b"good")
        await inbox.wait_for(2)
        await wait_pending(service, ua.uaid, 0)
        assert inbox.texts == ["bad", "good"] and ua.connected
    assert "acknowledged with code 102" in caplog.text
    assert "handler bug" in caplog.text


async def test_an_undecryptable_body_is_never_delivered(
    service: RunningService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    caplog.set_level(logging.INFO, logger="tidings.service")
    stranger = public_key_bytes(ec.generate_private_key(ec.SECP256R1()))
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=inbox)
        info = (await registration.push_manager.subscribe()).to_json()
        wrong = encrypt(b"for someone else", stranger, b"S" * 16)
        assert (await send_raw(info, b"", body=wrong)).status_code == 201
        await send_raw(info, b"fine")
        await inbox.wait_for(1)
        await wait_pending(service, ua.uaid, 0)
        await asyncio.sleep(0.1)
        assert inbox.texts == ["fine"]
    assert "acknowledged with code 101" in caplog.text


async def test_handlers_per_scope_share_one_connection(
    service: RunningService, tmp_path: Path
) -> None:
    inboxes = {scope: Inbox() for scope in ("a", "b", "c")}
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
        infos = {}
        for scope, inbox in inboxes.items():
            registration = await ua.register(scope, on_push=inbox)
            infos[scope] = (await registration.push_manager.subscribe()).to_json()
        assert len({i["endpoint"] for i in infos.values()}) == 3
        for scope, info in infos.items():
            await send_raw(info, scope.encode())
        for scope, inbox in inboxes.items():
            assert [e.data.text() for e in await inbox.wait_for(1)] == [scope]  # type: ignore[union-attr]
        assert ua.connections == 1 and service.service is not None
        assert len(service.service.hub) == 1
        assert await ua.registrations[0].unregister() is True
        assert ua.get_registration("a") is None
